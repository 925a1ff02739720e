"""`fusechat3 lm-eval`: lm-evaluation-harness's Python API on a toy model with a local task, end to end, and its
numbers in the run's results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusechat3.evaluation.lm_eval_bridge import primary_metric

pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["star", "gold", "bell", "car", "milk", "tree", "rose", "door", "fish", "king", "moon", "cup"]


def _task_dir(tmp: Path, n: int = 12) -> Path:
    """The fixture task with `n` questions: the last of four words, against three other words as distractors."""
    rows = []
    for i in range(n):
        words = [WORDS[(i + k) % len(WORDS)] for k in range(4)]
        choices = [words[3], words[0], words[1], words[2]]
        label = i % 4
        choices[0], choices[label] = choices[label], choices[0]
        rows.append({"question": f"Which word comes last: {' '.join(words)}", "choices": choices, "label": label})
    data = tmp / "toy_pick_word.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = (ROOT / "tests/fixtures/lm_eval/toy_pick_word.yaml").read_text().replace("DATA_FILE", str(data))
    folder = tmp / "tasks"
    folder.mkdir()
    (folder / "toy_pick_word.yaml").write_text(task)
    return folder


def test_the_primary_metric_is_the_first_one_reported() -> None:
    assert primary_metric({"alias": "t", "sample_len": 12, "acc,none": 0.5, "acc_stderr,none": 0.1}) == 0.5
    assert primary_metric({"alias": "t", "exact_match_stderr,strict": 0.1, "exact_match,strict": 0.25}) == 0.25
    assert primary_metric({"alias": "t", "sample_len": 12}) is None


@pytest.mark.integration
def test_lm_eval_runs_a_local_task_on_a_toy_model_and_fills_the_table(tmp_path: Path) -> None:
    from fusechat3.evaluation.lm_eval_bridge import evaluate, run_lm_eval
    from fusechat3.recipe import load_recipe, resolve_model
    from fusechat3.run import Run

    tasks = _task_dir(tmp_path)
    # The instruction source knows this task family; the untrained target does not.
    source = evaluate(resolve_model("toyworld:gpt2-chat"), ["toy_pick_word"], include_path=str(tasks), batch_size=4)
    assert source == {"toy_pick_word": 1.0}

    run = Run(load_recipe(ROOT / "recipes/toyworld/imf.yaml", [f"run_dir={tmp_path / 'run'}"]))
    found = run_lm_eval(run, ["target_before"], ["toy_pick_word"], include_path=str(tasks), batch_size=4)
    assert set(found) == {"target_before"} and set(found["target_before"]) == {"lm_eval:toy_pick_word"}
    assert found["target_before"]["lm_eval:toy_pick_word"] < 1.0
    md = (tmp_path / "run" / "eval" / "scoreboard.md").read_text()
    assert md.startswith("| model | lm_eval:toy_pick_word | average |")
    value = 100 * found["target_before"]["lm_eval:toy_pick_word"]
    assert f"| `target_before` | {value:.1f} | {value:.1f} |" in md


def test_an_unknown_task_is_one_line(tmp_path: Path) -> None:
    from fusechat3.errors import UserError
    from fusechat3.evaluation.lm_eval_bridge import evaluate

    with pytest.raises(UserError, match="no task 'no_such_task'.*--include-path"):
        evaluate("unused", ["no_such_task"])
