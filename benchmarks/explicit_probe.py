"""A first probe of explicit fusion on the toy world, before its stages exist: does the sources'
fused teacher carry knowledge that the training text alone does not?

The corpus is of mixed quality, as real corpora are. Each training prompt of the fusion pool comes
with its right answer, or (with probability `--noise`) with a near miss. Two students start from the
toy target and train for the same steps on the same texts:

- **lm-only**: fusion_lambda 1, the gold-text loss alone (the control);
- **fused**: fusion_lambda `--lam`, with the MinCE teacher of the three sources (`explicit.teacher`,
  vocabulary maps from the corpus's co-alignment counts).

Both are evaluated greedily on the held-out prompts (vLLM and the project's verifiers, as the eval
stage does). Prints the accuracy per domain of each and `ratio <fused / lm-only>` of the averages.

    python benchmarks/explicit_probe.py            # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOMAINS = ("instruction", "math", "code")
SOURCES = ("mistral-math", "qwen2-code", "gpt2-chat")


def corpus(per_domain: int, noise: float, seed: int) -> list[list[dict]]:
    from fusechat3.toyworld import tasks as T
    from fusechat3.toyworld.mistakes import near_miss

    rng = random.Random(seed)
    out = []
    for d in DOMAINS:
        for t in T.split_tasks(d, per_domain, "fusion"):
            answer = near_miss(t, rng) if rng.random() < noise else t.response
            out.append([{"role": "user", "content": t.prompt}, {"role": "assistant", "content": answer}])
    return out


def teacher_rows(convs, k: int) -> list[dict]:
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.explicit.align import align
    from fusechat3.explicit.represent import encode, represent
    from fusechat3.explicit.teacher import teacher
    from fusechat3.explicit.vocab import CoAlignment, vocab_map
    from fusechat3.recipe import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("toyworld:target"))
    targets = [encode(tok, c) for c in convs]
    reps, maps = [], []
    for name in SOURCES:
        path = resolve_model(f"toyworld:{name}")
        s_tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        reps.append(represent(model, s_tok, convs, k=k, batch_size=32))
        co = CoAlignment.empty(len(s_tok), len(tok))
        for c in convs[:: max(1, len(convs) // 300)]:
            t_ids, s_ids, al = align(tok, s_tok, c[-1]["content"])
            co.add_alignment(s_ids, t_ids, al.groups)
        maps.append(vocab_map(s_tok, tok, co))
    rows = []
    for n, t_rep in enumerate(targets):
        fused = teacher(t_rep, [r[n] for r in reps], maps, "minCE", k)
        rows.append(
            {
                "input_ids": t_rep["ids"].tolist(),
                "labels": np.where(t_rep["mask"], t_rep["ids"], -100).tolist(),
                "fused_ids": fused.ids.tolist(),
                "fused_probs": fused.probs.tolist(),
            }
        )
    return rows


def train(rows, lam: float, out: str, args) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.recipe import resolve_model
    from fusechat3.training.fusion_trainer import FusionConfig, FusionTrainer

    path = resolve_model("toyworld:target")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    config = FusionConfig(
        output_dir=out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        use_cpu=True,
        seed=args.seed,
        fusion_lambda=lam,
    )
    FusionTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
    model.save_pretrained(out)
    tok.save_pretrained(out)


def evaluate(path: str) -> dict[str, float]:
    from data_builders import run_builder
    from fusechat3.sampling import get_sampler
    from fusechat3.sampling.params import GenParams
    from fusechat3.scoring.verify import verify_many

    built = run_builder("toyworld", {"split": "eval", "per_domain": 100})
    prompts = [p for p in getattr(built, "rows", built) if p["domain"] in DOMAINS]
    sampler = get_sampler("vllm", path, max_model_len=512)
    try:
        outs = sampler.generate([p["messages"] for p in prompts], GenParams(n=1, temperature=0.0, max_tokens=96))
    finally:
        sampler.close()
    texts = [o[0].text if o[0].finish_reason == "stop" else "" for o in outs]
    checks = verify_many(prompts, texts, timeout_s=5.0, memory_mb=512)
    acc = {}
    for d in DOMAINS:
        got = [bool(c) for p, (c, _) in zip(prompts, checks, strict=True) if p["domain"] == d]
        acc[d] = 100 * sum(got) / len(got)
    acc["average"] = sum(acc[d] for d in DOMAINS) / len(DOMAINS)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-domain", type=int, default=600)
    ap.add_argument("--noise", type=float, default=0.5, help="share of training answers that are near misses")
    ap.add_argument("--lam", type=float, default=0.5, help="fusion_lambda of the fused student")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    convs = corpus(args.per_domain, args.noise, args.seed)
    rows = teacher_rows(convs, args.k)
    print(
        f"corpus: {len(convs)} conversations ({args.noise:.0%} near misses); teacher built in {time.time() - t0:.0f} s"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, lam in (("lm-only", 1.0), ("fused", args.lam)):
            out = os.path.join(tmp, name)
            train(rows, lam, out, args)
            results[name] = evaluate(out)
    print("| student | " + " | ".join(DOMAINS) + " | average |")
    print("|---|" + "---|" * (len(DOMAINS) + 1))
    for name, acc in results.items():
        print(f"| {name} | " + " | ".join(f"{acc[d]:.0f}" for d in DOMAINS) + f" | {acc['average']:.1f} |")
    print(f"total {time.time() - t0:.0f} s")
    print(f"ratio {results['fused']['average'] / max(results['lm-only']['average'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
