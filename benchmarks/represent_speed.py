"""Representations: vLLM `prompt_logprobs` against the transformers forward, on the same texts and model.

Both compute the same rows (top-k next-token log-probs at every position and the cross-entropy over
the assistant turns; tests check they agree): `represent.represent` (batched, right-padded, float32)
and `represent_vllm.represent_vllm`. Each side runs once to warm up, then is timed; the engine's
start is not timed.

    python benchmarks/represent_speed.py                                    # toy source, CPU
    python benchmarks/represent_speed.py --model Qwen/Qwen2.5-7B-Instruct --texts 2000   # on a GPU

Prints tokens/s of each side and `ratio <vllm / transformers>`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.explicit.represent import represent
    from fusechat3.explicit.represent_vllm import open_engine, represent_vllm
    from fusechat3.recipe import resolve_model
    from fusechat3.toyworld import tasks as T

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toyworld:qwen2-code")
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32, help="transformers side")
    args = ap.parse_args()

    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    tasks = [t for d in T.FAMILIES for t in T.split_tasks(d, max(1, args.texts // len(T.FAMILIES)), "fusion")]
    convs = [[{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.response}] for t in tasks]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).to(device).eval()

    represent(model, tok, convs[:8], k=args.k, batch_size=args.batch_size)
    t0 = time.perf_counter()
    rows = represent(model, tok, convs, k=args.k, batch_size=args.batch_size)
    hf_s = time.perf_counter() - t0
    tokens = sum(len(r["ids"]) for r in rows)
    del model

    llm = open_engine(path)
    represent_vllm(llm, tok, convs[:8], k=args.k)
    t0 = time.perf_counter()
    represent_vllm(llm, tok, convs, k=args.k)
    vllm_s = time.perf_counter() - t0

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {device}")
    print(f"{len(convs)} conversations, {tokens} tokens, top-{args.k}, model {args.model}")
    print(f"transformers (batch {args.batch_size}): {hf_s:.2f} s, {tokens / hf_s:.0f} tokens/s")
    print(f"vLLM prompt_logprobs: {vllm_s:.2f} s, {tokens / vllm_s:.0f} tokens/s")
    print(f"ratio {hf_s / vllm_s:.2f}")


if __name__ == "__main__":
    main()
