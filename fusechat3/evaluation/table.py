"""The scoreboard as a results table, the shape of the papers' tables: one row per model, one column per benchmark
and the average, each cell the score in percent and its difference from the first model (the target before fusion),
as Markdown (`scoreboard.md`) and a grouped bar plot (`scoreboard.png`, matplotlib)."""

from __future__ import annotations

from pathlib import Path


def columns(result: dict) -> list[str]:
    """The benchmarks of a scoreboard, sorted, then "average"."""
    names = sorted({b for scores in result["models"].values() for b in scores if b != "average"})
    return [*names, "average"]


def markdown(result: dict, target: str | None = None) -> str:
    """The table, deltas against the first model; win-rate benchmarks are marked and explained under it; with the
    run's `target` (its Hub id), the paper's numbers for that target under it (`fusechat3.evaluation.paper`)."""
    models = result["models"]
    cols = columns(result)
    judged = sorted({b for per in result.get("win_rates", {}).values() for b in per})
    first = next(iter(models), None)
    head = [f"{c} (win rate)" if c in judged else c for c in cols]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    for name, scores in models.items():
        cells = []
        for c in cols:
            if c not in scores:
                cells.append("-")
                continue
            value = 100 * scores[c]
            base = models[first].get(c) if first is not None else None
            delta = "" if name == first or base is None else f" ({value - 100 * base:+.1f})"
            cells.append(f"{value:.1f}{delta}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    n = result.get("n", {})
    notes = [
        "",
        f"Scores in %, in brackets the difference from `{first}`. Prompts per benchmark: "
        + ", ".join(f"{b} {n[b]}" for b in sorted(n))
        + ".",
    ]
    if judged:
        notes.append(
            "Win rate: the model's answer against the benchmark's baseline answer, judged by the reward model, ties "
            "one half; the 95% bootstrap interval and the length-controlled rate are in `scoreboard.json` "
            "(`win_rates`) and printed by `fusechat3 eval`."
        )
    if target:
        from fusechat3.evaluation import paper

        notes += paper.notes(target, cols)
    return "\n".join(lines + notes) + "\n"


def plot(result: dict, path: Path) -> None:
    """A grouped bar chart: one group per benchmark (and the average), one bar per model."""
    from matplotlib.figure import Figure

    models = result["models"]
    cols = columns(result)
    fig = Figure(figsize=(max(6.0, 1.4 * len(cols) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    for k, (name, scores) in enumerate(models.items()):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(cols))]
        ax.bar(xs, [100 * scores.get(c, 0.0) for c in cols], width, label=name)
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncols=2)
    ax.set_title("scoreboard")
    fig.savefig(path, dpi=110)


def merged(result: dict, extra: dict[str, dict[str, float]]) -> dict:
    """The scoreboard with more columns per model (lm-eval's), the average over every column recomputed."""
    models = {name: dict(scores) for name, scores in result.get("models", {}).items()}
    for name, columns_ in extra.items():
        models.setdefault(name, {}).update(columns_)
    for scores in models.values():
        values = [v for k, v in scores.items() if k != "average"]
        scores["average"] = round(sum(values) / len(values), 4) if values else 0.0
    return {**result, "models": models}


def write_table(run, result: dict | None = None) -> dict:
    """`eval/scoreboard.md` and `.png` from the eval stage's scoreboard (`result`, else read from the run) and
    lm-eval's results, whichever exist."""
    import json

    board, extra = run.output("eval", "scoreboard"), run.output("eval", "lm_eval")
    if result is None:
        result = json.loads(board.read_text()) if board.is_file() else {"models": {}, "n": {}}
    if extra.is_file():
        result = merged(result, json.loads(extra.read_text()))
    run.output("eval", "table").write_text(markdown(result, run.recipe.target.model))
    plot(result, run.output("eval", "plot"))
    return result
