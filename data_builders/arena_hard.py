"""Arena-Hard-Auto v0.1 (`lmarena-ai/arena-hard-auto-v0.1`): 500 hard user prompts, judged against a baseline's
answers for a win rate.

Columns: `question_id`, `category`, `cluster`, `turns` (a list of `{"content": ...}`, the user turns; v0.1 has
one). The baseline's answers are not in the dataset: `baseline` names a JSONL file in Arena-Hard's
`model_answer/<model>.jsonl` layout (`question_id`, `model_id`, `choices: [{"turns": [{"content": ...}]}]`; the
benchmark's is `gpt-4-0314.jsonl`), joined by question_id into `meta["baseline"]` / `meta["baseline_model"]`.
Without `baseline` the prompts come alone (for sampling, or a judge with its own reference); with it, a question
the file has no answer for is counted `no_baseline`.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, iter_rows, load, text
from fusechat3.errors import RowError

HUB_ID = "lmarena-ai/arena-hard-auto-v0.1"


def baseline_answers(path: str) -> dict[str, tuple[str, str]]:
    """question_id -> (answer, model) from an Arena-Hard model-answer file (its first choice's last turn)."""
    ds = load(
        "arena_hard", path, ["question_id", "model_id", "choices"], hint="; give Arena-Hard's model_answer layout"
    )
    out: dict[str, tuple[str, str]] = {}
    for i, row in iter_rows(ds):
        try:
            answer = row["choices"][0]["turns"][-1]["content"]
        except (TypeError, IndexError, KeyError):
            raise RowError(
                f"arena_hard builder: {path}: row {i}: no choices[0].turns[-1].content; give Arena-Hard's "
                "model_answer layout"
            ) from None
        out[str(row["question_id"])] = (text(answer), text(row["model_id"]))
    return out


def build(
    path: str = HUB_ID,
    split: str = "train",
    baseline: str | None = None,
    limit: int | None = None,
    revision: str | None = None,
) -> Built:
    answers = baseline_answers(baseline) if baseline else None
    ds = load("arena_hard", path, ["question_id", "category", "cluster", "turns"], split=split, revision=revision)
    out = PromptSet("arena_hard", path, HUB_ID, "instruction", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        turns = [text(t.get("content")) for t in row["turns"] or [] if isinstance(t, dict)]
        question = turns[-1] if turns else ""
        meta = {"benchmark": "arena_hard", "id": str(row["question_id"]), "category": row["cluster"]}
        if answers is not None:
            found = answers.get(str(row["question_id"]))
            if found is None or not found[0]:
                out.skip("no_baseline", question)
                continue
            meta["baseline"], meta["baseline_model"] = found
        out.add(i, question, meta=meta)
    return out.built
