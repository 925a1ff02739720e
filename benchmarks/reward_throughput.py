"""The batched reward scorer against a naive one-at-a-time loop, over the same conversations.

Both sides use the same loaded model and do the whole job per conversation: render it with the reward
model's chat template, tokenize it, run the forward pass, read the reward. The naive side is what a first
version would write: `model(**tokenizer(text))` per conversation (batch of 1, no padding, no sorting). The
batched side is `RewardModel.score` (length-sorted batches under a token budget, right padding). Rounds
alternate between the sides, in one process.

    python benchmarks/reward_throughput.py                                  # toy reward model, CPU, float32
    python benchmarks/reward_throughput.py --model Skywork/Skywork-Reward-Llama-3.1-8B-v0.2 --dtype bfloat16
    python benchmarks/reward_throughput.py --vllm                           # also time backend="vllm"

Prints samples/s of each side, the ratio batched / naive (target >= 5x) and the largest absolute difference
between the two sides' rewards (target <= 1e-4 in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def toy_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """n toy-world prompts (all four domains) with responses of varied length: the prompt's reference or gold
    answer where it has one, followed by 0-40 words sampled from the prompts (seeded)."""
    from data_builders.toyworld import build

    domains = ("instruction", "math", "code", "zh")
    prompts = build("fusion", {d: n // len(domains) + (k < n % len(domains)) for k, d in enumerate(domains)})
    rng = random.Random(seed)
    vocab = sorted({w for p in prompts for w in p["messages"][0]["content"].split()})
    conversations = []
    for p in prompts:
        answer = json.loads(p["meta"] or "{}").get("reference") or p["gold"] or ""
        words = " ".join(rng.choices(vocab, k=rng.randint(0, 40)))
        conversations.append(p["messages"] + [{"role": "assistant", "content": f"{answer} {words}".strip()}])
    return conversations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toyworld:reward", help="toyworld:<name>, a local folder or a Hub id")
    ap.add_argument("--n", type=int, default=512, help="number of conversations")
    ap.add_argument("--batch-size", type=int, default=64, help="most rows per forward pass")
    ap.add_argument("--max-tokens-per-batch", type=int, default=16384, help="most padded tokens per forward pass")
    ap.add_argument("--dtype", default=None, help="torch dtype; default float32 on CPU, the model's own on GPU")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side (alternating)")
    ap.add_argument("--vllm", action="store_true", help="also time RewardModel(backend='vllm')")
    args = ap.parse_args()

    import torch

    from fusechat3.recipe import resolve_model
    from fusechat3.scoring.reward import RewardModel

    path = resolve_model(args.model)
    conversations = toy_conversations(args.n)
    rm = RewardModel(
        path,
        batch_size=args.batch_size,
        max_length=4096,
        max_tokens_per_batch=args.max_tokens_per_batch,
        dtype=args.dtype,
    )
    tok, model = rm.tokenizer, rm.model

    def naive() -> list[float]:
        rewards = []
        for c in conversations:
            text = tok.apply_chat_template(c, tokenize=False)
            inputs = tok(text, add_special_tokens=False, return_tensors="pt").to(model.device)
            with torch.inference_mode():
                out = model(**inputs)
            value = getattr(out, "score", None)
            rewards.append(float((out.logits if value is None else value).reshape(-1)[0]))
        return rewards

    def batched() -> list[float]:
        scored = rm.score(conversations)
        assert all(why == "ok" for _, why in scored), {why for _, why in scored}
        return [r for r, _ in scored]

    sides = {"naive": naive, "batched": batched}
    rewards = {name: fn() for name, fn in sides.items()}  # warm-up: first-call costs on both sides
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            rewards[name] = fn()
            rates[name].append(len(conversations) / (time.perf_counter() - t0))
    diff = max(abs(a - b) for a, b in zip(rewards["naive"], rewards["batched"], strict=True))
    lengths = [len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"])
               for c in conversations]  # fmt: skip
    dtype = next(model.parameters()).dtype
    # Where the ceiling is: the dense work is about 2 FLOPs per weight (outside the embedding) per token, the
    # same on both sides; a plain matmul of the model's own width, as big as a batch, is the most this machine
    # does per second. If the batched side already runs near that rate, no batching can go faster.
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    dense = sum(p.numel() for p in model.parameters()) - embed
    work = 2.0 * dense * sum(lengths)
    width = model.config.hidden_size
    a = torch.randn(args.max_tokens_per_batch, width, dtype=dtype, device=model.device)
    b = torch.randn(width, getattr(model.config, "intermediate_size", 4 * width), dtype=dtype, device=model.device)
    a @ b
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    peak = 10 * 2.0 * a.shape[0] * width * b.shape[1] / (time.perf_counter() - t0)
    rm.close()

    print(
        f"model {args.model} ({str(dtype).removeprefix('torch.')}, {model.device.type}), {len(conversations)} "
        f"conversations of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), "
        f"batch_size {args.batch_size}, max_tokens_per_batch {args.max_tokens_per_batch}, {args.rounds} rounds; "
        f"torch threads {torch.get_num_threads()}, {platform.machine()}"
    )
    for name in sides:
        print(f"  {name:8s} {statistics.median(rates[name]):9.1f} samples/s  (rounds: "
              + ", ".join(f"{r:.1f}" for r in rates[name]) + ")")  # fmt: skip
    ratio = statistics.median(rates["batched"]) / statistics.median(rates["naive"])
    print(f"  ratio batched / naive: {ratio:.1f}x (target >= 5x)")
    gflops = {name: work * statistics.median(rates[name]) / len(conversations) / 1e9 for name in sides}
    print(
        f"  dense work {work / 1e9:.1f} GFLOP per pass ({dense / 1e6:.2f}M weights x {sum(lengths)} tokens x 2): "
        f"naive {gflops['naive']:.1f} GFLOP/s, batched {gflops['batched']:.1f} GFLOP/s; a [{a.shape[0]}x{width}] @ "
        f"[{width}x{b.shape[1]}] matmul runs at {peak / 1e9:.1f} GFLOP/s here, so batching can reach at most "
        f"~{peak / 1e9 / gflops['naive']:.1f}x over the naive loop on this device"
    )
    print(f"  max |reward batched - reward naive|: {diff:.2e} (target <= 1e-4 in float32)")

    if args.vllm:
        with RewardModel(path, max_length=4096, backend="vllm", dtype=args.dtype) as vrm:
            vrm.score(conversations)  # warm-up
            vrates = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                scored = vrm.score(conversations)
                vrates.append(len(conversations) / (time.perf_counter() - t0))
        assert all(why == "ok" for _, why in scored), {why for _, why in scored}
        vdiff = max(abs(r - b) for (r, _), b in zip(scored, rewards["batched"], strict=True))
        vratio = statistics.median(vrates) / statistics.median(rates["naive"])
        print(f"  vllm     {statistics.median(vrates):9.1f} samples/s  (rounds: " + ", ".join(f"{r:.1f}" for r in vrates)
              + f"); ratio vllm / naive: {vratio:.1f}x; max |reward vllm - reward batched|: {vdiff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
