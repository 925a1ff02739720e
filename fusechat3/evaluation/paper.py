"""The FuseChat-3.0 paper's own numbers (arXiv 2412.03187, its results tables), shown under a results table where
the run evaluates the same target on the same benchmark.

Only what the paper states is here. Its headline is a 14-benchmark average (13 for Llama-3.2-1B) over benchmarks
this project does not all run, so the averages are listed for reference and never set beside ours as a column.
Its AlpacaEval 2 figure is the length-controlled win rate with GPT-4 Turbo as the judge and its Arena-Hard figure the
win rate against GPT-4-0314 judged by GPT-4 Turbo; ours come from a reward-model judge, so they are shown beside
each other, not compared.
"""

from __future__ import annotations

# target Hub id -> the paper's (before fusion, after fusion) per benchmark, in %.
RESULTS: dict[str, dict[str, tuple[float, float]]] = {
    "meta-llama/Llama-3.1-8B-Instruct": {"alpaca_eval": (28.3, 65.4), "arena_hard": (28.1, 58.2)},
}
# target Hub id -> the paper's average over its benchmarks (before, after), in %.
AVERAGES: dict[str, tuple[float, float]] = {
    "meta-llama/Llama-3.1-8B-Instruct": (40.5, 47.3),
    "Qwen/Qwen2.5-7B-Instruct": (50.0, 52.9),
    "google/gemma-2-9b-it": (43.9, 48.2),
    "meta-llama/Llama-3.2-3B-Instruct": (35.2, 40.2),
    "meta-llama/Llama-3.2-1B-Instruct": (24.0, 26.5),
}
WHAT = {
    "alpaca_eval": "AlpacaEval 2 length-controlled win rate, GPT-4 Turbo judge",
    "arena_hard": "Arena-Hard v0.1 win rate against GPT-4-0314, GPT-4 Turbo judge",
}


def notes(target: str, benchmarks: list[str]) -> list[str]:
    """Markdown lines: the paper's numbers for `target` on the `benchmarks` the table has, and its average."""
    lines = []
    for bench in benchmarks:
        if bench in RESULTS.get(target, {}):
            before, after = RESULTS[target][bench]
            lines.append(f"- {bench}: {before:.1f} -> {after:.1f} ({WHAT[bench]})")
    if target in AVERAGES:
        before, after = AVERAGES[target]
        n = 13 if target.endswith("1B-Instruct") else 14
        lines.append(f"- the average over its {n} benchmarks (not the columns above): {before:.1f} -> {after:.1f}")
    if not lines:
        return []
    head = f"The FuseChat-3.0 paper, the same target (`{target}`), before -> after fusion (its judges, not ours):"
    return ["", head, *lines]
