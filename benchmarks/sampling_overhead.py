"""What fusechat3's vLLM backend costs over a bare `vllm.LLM.generate` call.

Same engine, same prompts, same sampling parameters and per-request seeds (so both
sides generate exactly the same tokens), alternating rounds, in one run. Ours does
everything the sample stage asks of it: checks each conversation, renders it with the
model's chat template, tokenizes it, checks its length, calls vLLM, reports progress
and builds Completion objects. The bare side gets its prompts already rendered as text
(rendering is outside its timed region), and vLLM tokenizes them.

    python benchmarks/sampling_overhead.py                       # toy models, CPU
    python benchmarks/sampling_overhead.py --model Qwen/Qwen2.5-7B-Instruct --prompts 2000 --max-tokens 512

Prints generated tokens/s of each side and the ratio ours / bare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toyworld:qwen2-code", help="toyworld:<name>, a local folder or a Hub id")
    ap.add_argument("--prompts", type=int, default=400, help="number of toy-world prompts")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (alternating)")
    ap.add_argument("--max-model-len", type=int, default=512)
    args = ap.parse_args()

    from vllm import SamplingParams

    from data_builders.toyworld import build as toy_prompts
    from fusechat3.recipe import resolve_model
    from fusechat3.sampling import GenParams, get_sampler
    from fusechat3.sampling.base import derive_seed

    per_domain = {d: args.prompts // 4 for d in ("math", "code", "instruction", "zh")}
    prompts = toy_prompts("fusion", per_domain)
    conversations = [p["messages"] for p in prompts]
    seeds = [derive_seed(0, p["prompt_id"]) for p in prompts]
    params = GenParams(n=args.n, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens)

    sampler = get_sampler("vllm", resolve_model(args.model), max_model_len=args.max_model_len)
    llm, tok = sampler.llm, sampler.tokenizer
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    bare_params = [
        SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=s) for s in seeds
    ]

    def ours() -> int:
        done = [0]
        out = sampler.generate(conversations, params, seeds=seeds, progress=lambda k: done.__setitem__(0, done[0] + k))
        assert done[0] == len(conversations), (done[0], len(conversations))  # every prompt reported once
        return sum(c.num_tokens for cs in out for c in cs)

    def bare() -> int:
        out = llm.generate(texts, bare_params, use_tqdm=False)
        return sum(len(o.token_ids) for r in out for o in r.outputs)

    ours(), bare()  # warm-up: first-call costs on both sides
    rates: dict[str, list[float]] = {"bare": [], "ours": []}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fn in (("bare", bare), ("ours", ours)):
            t0 = time.perf_counter()
            tokens[name] = fn()
            rates[name].append(tokens[name] / (time.perf_counter() - t0))
    sampler.close()

    if tokens["ours"] != tokens["bare"]:
        print(f"warning: generated tokens differ (ours {tokens['ours']}, bare {tokens['bare']})")
    print(
        f"model {args.model}: {len(prompts)} prompts x n={args.n}, max_tokens {args.max_tokens}, {args.rounds} rounds"
    )
    for name in ("bare", "ours"):
        r = rates[name]
        print(f"  {name:5s} {statistics.median(r):9.0f} generated tokens/s (median; rounds: {[round(x) for x in r]})")
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["bare"])
    print(f"  ratio ours / bare: {ratio:.3f}  (tokens per round: {tokens['ours']})")


if __name__ == "__main__":
    main()
