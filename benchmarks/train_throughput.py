"""Training throughput of SFT and DPO: TRL's default settings against our recipes' settings, side by side.

Both sides train the same model (built from a config, random weights) on the same synthetic conversations
with the same batch size, learning rate and maximum length, through our trainers (fusechat3.training.sft/dpo,
i.e. TRL's SFTTrainer and DPOTrainer). Only the settings under test differ:

| setting | TRL default | ours (recipes/fusechat3/*) |
|---|---|---|
| `gradient_checkpointing` | true | false where the model fits without it (`--ours-checkpointing` to keep it) |
| `precompute_ref_log_probs` (DPO) | false: a reference forward every step | true: once, before training, cached |
| `padding_free` | false | true where flash attention is installed (GPU); packing is not used (it mixes rows) |
| `use_liger_kernel` | false | true where liger-kernel is installed |

    python benchmarks/train_throughput.py                       # CPU, CI-sized: the toy target, 256 rows
    python benchmarks/train_throughput.py --size 0.5b --rows 4096 --max-length 2048 --batch-size 8   # one GPU

Tokens/s counts the real (non-pad) tokens of the rows trained on, per second of `trainer.train()`; for DPO
the end-to-end figure also counts the trainer's set-up (where the reference log-probs are precomputed). On a
GPU it also prints MFU (6 x parameters x tokens/s over the GPU's peak bf16 FLOP/s, `--peak-tflops`) and the
peak memory. Random weights do not change the speed; the toy world's tokenizer is used (small vocabulary).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

# Llama-style shapes (hidden, layers, heads, kv heads, intermediate) for the GPU form.
SIZES = {
    "0.5b": (1024, 24, 16, 8, 4096),
    "1b": (2048, 16, 32, 8, 8192),
}


def build_model(size: str | None, out: Path) -> str:
    """A folder with a model of `size` (random weights) and the toy target's tokenizer; None: the toy target."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fusechat3.recipe import resolve_model

    toy = resolve_model("toyworld:target")
    if size is None:
        return toy
    hidden, layers, heads, kv, inter = SIZES[size]
    tok = AutoTokenizer.from_pretrained(toy)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def synthetic_rows(n: int, max_words: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """SFT and DPO rows of toy-world prompts with responses of 1..max_words random words (seeded)."""
    from data_builders.toyworld import build

    prompts = build("fusion", {"instruction": n // 2 + 1, "math": n // 2 + 1})[:n]
    rng = random.Random(seed)
    vocab = sorted({w for p in prompts for w in p["messages"][0]["content"].split()})

    def say() -> dict:
        return {"role": "assistant", "content": " ".join(rng.choices(vocab, k=rng.randint(1, max_words)))}

    sft = [{"messages": p["messages"] + [say()]} for p in prompts]
    dpo = [{"prompt": p["messages"], "chosen": [say()], "rejected": [say()]} for p in prompts]
    return sft, dpo


def settings(kind: str, side: str, gpu: bool, keep_checkpointing: bool) -> dict:
    if side == "default":
        return {}
    out = {"gradient_checkpointing": keep_checkpointing}
    if kind == "dpo":
        out["precompute_ref_log_probs"] = True
    if gpu and importlib.util.find_spec("flash_attn") is not None:
        out["padding_free"] = True
        out["model_init_kwargs"] = {"attn_implementation": "flash_attention_2", "dtype": "bfloat16"}
    if importlib.util.find_spec("liger_kernel") is not None:
        out["use_liger_kernel"] = True
    return out


def count_tokens(trainer, kind: str) -> int:
    """Real tokens the trainer sees in one epoch of its (tokenized) train set."""
    ds = trainer.train_dataset
    if kind == "sft":
        return sum(len(ids) for ids in ds["input_ids"])
    rows = zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in rows)


def run_side(kind: str, side: str, model: str, rows: list[dict], common: dict, extra: dict, work: Path) -> dict:
    import datasets
    import torch

    from fusechat3.training.dpo import build_dpo_trainer, dpo_config
    from fusechat3.training.sft import build_sft_trainer, sft_config

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    args = {**common, **extra}
    out = str(work / f"{kind}-{side}-{time.monotonic_ns()}")
    data = datasets.Dataset.from_list(rows)
    t0 = time.perf_counter()
    if kind == "sft":
        trainer = build_sft_trainer(model, data, sft_config(args, out))
    else:
        trainer = build_dpo_trainer(model, data, dpo_config(args, out))
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.train()
    if gpu:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t1
    tokens = count_tokens(trainer, kind) * int(common["num_train_epochs"])
    params = sum(p.numel() for p in trainer.model.parameters())
    result = {
        "tokens": tokens,
        "train_s": train_s,
        "setup_s": setup,
        "tok_s": tokens / train_s,
        "tok_s_end_to_end": tokens / (train_s + setup),
        "params": params,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
    }
    del trainer
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), help="model built from a config (GPU form); default: toy target")
    ap.add_argument("--rows", type=int, default=256, help="training rows (one epoch)")
    ap.add_argument("--max-words", type=int, default=60, help="longest synthetic response, in words")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--kinds", default="sft,dpo")
    ap.add_argument("--ours-checkpointing", action="store_true", help="keep gradient checkpointing on our side")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak dense bf16 TFLOP/s (H100 SXM: 989)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per side; the fastest is kept")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    sft_rows, dpo_rows = synthetic_rows(args.rows, args.max_words)
    common = {
        "num_train_epochs": 1,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-5,
        "max_length": args.max_length,
        "logging_steps": 10**6,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
    }
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(args.size, work / "model")
        for kind in args.kinds.split(","):
            rows = sft_rows if kind == "sft" else dpo_rows
            figures[kind] = {}
            # Rounds alternate between the sides; each side keeps its fastest round (the first round of a
            # process also pays one-time costs: imports, kernel and dataset caches).
            for _ in range(args.rounds):
                for side in ("default", "ours"):
                    extra = settings(kind, side, gpu, args.ours_checkpointing)
                    f = {"settings": extra, **run_side(kind, side, model, rows, common, extra, work)}
                    if side not in figures[kind] or f["tok_s"] > figures[kind][side]["tok_s"]:
                        figures[kind][side] = f
    device = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"model: {args.size or 'toyworld:target'}, {figures[next(iter(figures))]['default']['params'] / 1e6:.1f}M "
          f"parameters; {args.rows} rows, max_length {args.max_length}, batch {args.batch_size}; {device}")  # fmt: skip
    for kind, sides in figures.items():
        d, o = sides["default"], sides["ours"]
        for side, f in sides.items():
            line = f"  {kind} {side:7s} {f['tok_s']:10.1f} tok/s training, {f['tok_s_end_to_end']:10.1f} end to end"
            if gpu:
                mfu = 6 * f["params"] * f["tok_s"] / (args.peak_tflops * 1e12)
                line += f", MFU {100 * mfu:.1f}%, peak {f['peak_gib']:.1f} GiB"
            print(line + f"  {f['settings'] or '(TRL defaults)'}")
        print(f"  {kind} ratio ours / default: {o['tok_s'] / d['tok_s']:.2f}x training, "
              f"{o['tok_s_end_to_end'] / d['tok_s_end_to_end']:.2f}x end to end")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
