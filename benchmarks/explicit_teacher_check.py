"""What the explicit path's teacher says about the toy corpus, per domain, for right and for wrong texts
(the corpus of `recipes/toyworld/explicit.yaml` marks each reference response `response_correct`):

- **picks**: how often MinCE picks the domain's specialist (the source with the lowest cross-entropy on
  the text, from the `represent` stage's rows);
- **agree**: the share of labelled positions where the teacher's most likely token is the text's next token
  (from the `teacher/all` rows).

    fusechat3 run recipes/toyworld/explicit.yaml --to teacher      # or make demo-explicit
    python benchmarks/explicit_teacher_check.py runs/toyworld-explicit

Figures: benchmarks/RESULTS.md ("Explicit fusion as stages of a run").
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SPECIALIST = {"math": "mistral-math", "code": "qwen2-code", "zh": "qwen2-code", "instruction": "gpt2-chat"}


def _rows(pattern: str, columns=None) -> list[dict]:
    return [r for f in sorted(glob.glob(pattern)) for r in pq.read_table(f, columns=columns).to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    run = args.run_dir
    right = {
        r["prompt_id"]: json.loads(r["meta"]).get("response_correct")
        for r in _rows(str(run / "prompts" / "prompts.parquet"), ["prompt_id", "meta"])
    }
    domain = {
        r["prompt_id"]: r["domain"] for r in _rows(str(run / "corpus" / "corpus.parquet"), ["prompt_id", "domain"])
    }
    ce: dict[str, dict[str, float]] = defaultdict(dict)
    for source in sorted({*SPECIALIST.values()}):
        for r in _rows(str(run / "represent" / source / "shard-*.parquet"), ["prompt_id", "ce"]):
            ce[r["prompt_id"]][source] = r["ce"]
    picks: Counter = Counter()
    texts: Counter = Counter()
    for pid, by_source in ce.items():
        key = (domain[pid], right[pid])
        texts[key] += 1
        picks[key] += min(by_source, key=by_source.get) == SPECIALIST[domain[pid]]
    agree: dict[tuple, list[float]] = defaultdict(list)
    for r in _rows(str(run / "teacher" / "all" / "teacher.parquet")):
        ids, labels, top = np.array(r["input_ids"]), np.array(r["labels"]), np.array(r["fused_ids"])[:, 0]
        pos = np.flatnonzero(labels[1:] != -100)  # row t predicts token t + 1
        agree[(r["domain"], right[r["prompt_id"]])].append(float((top[pos] == ids[pos + 1]).mean()))
    print("| domain | text | texts | MinCE picks the specialist | teacher's top token = the text's |")
    print("|---|---|---|---|---|")
    for key in sorted(texts):
        d, ok = key
        print(
            f"| {d} | {'right' if ok else 'wrong'} | {texts[key]} | {100 * picks[key] / texts[key]:.1f}% "
            f"| {100 * np.mean(agree[key]):.1f}% |"
        )


if __name__ == "__main__":
    main()
