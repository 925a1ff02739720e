"""The reward-model-judged win rate (fusechat3.evaluation.winrate) and the eval stage's win-rate benchmarks: a model
against itself is 50% inside its interval, with real toy-model answers and real reward-model scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusechat3.evaluation.winrate import outcomes, win_rate

ROOT = Path(__file__).resolve().parents[1]


def test_ties_count_one_half_and_a_model_against_itself_is_fifty() -> None:
    assert outcomes([2.0, 1.0, 1.0], [1.0, 1.0, 3.0]).tolist() == [1.0, 0.5, 0.0]
    rng = np.random.default_rng(0)
    rewards, lengths = list(rng.normal(size=300)), list(rng.integers(10, 900, size=300))
    same = win_rate(rewards, rewards, lengths, lengths)
    assert same["win_rate"] == same["lc_win_rate"] == 50.0
    assert same["ci_low"] <= 50.0 <= same["ci_high"] and same["ties"] == 300


def test_the_interval_brackets_the_estimate_and_narrows_with_more_prompts() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        model, base = rng.normal(0.3, 1, n), rng.normal(0, 1, n)
        lengths = [100] * n
        r = win_rate(list(model), list(base), lengths, lengths, seed=3)
        assert r["ci_low"] < r["win_rate"] < r["ci_high"] and r["wins"] + r["losses"] + r["ties"] == n
        widths.append(r["ci_high"] - r["ci_low"])
        # The same seed gives the same interval.
        assert win_rate(list(model), list(base), lengths, lengths, seed=3) == r
    assert widths[1] < widths[0] / 2


def test_length_control_removes_a_win_that_comes_from_length_alone() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    theirs = rng.integers(100, 1000, n)
    # A model that writes longer answers 80% of the time, and a judge that prefers the longer answer (a logistic in
    # the length difference) and nothing else: at equal length, a coin flip.
    longer = rng.random(n) < 0.8
    mine = np.where(longer, theirs + rng.integers(50, 600, n), theirs - rng.integers(50, 90, n))
    diff = (mine - theirs).astype(float)
    p_win = 1 / (1 + np.exp(-3 * np.tanh(diff / diff.std())))
    won = rng.random(n) < p_win
    r = win_rate(list(np.where(won, 1.0, 0.0)), [0.5] * n, list(mine), list(theirs))
    assert r["win_rate"] > 65
    assert abs(r["lc_win_rate"] - 50) < 6  # at equal length, neither is preferred


def test_mismatched_inputs_are_an_error() -> None:
    with pytest.raises(ValueError, match="3 model rewards against 2"):
        outcomes([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no prompts"):
        win_rate([], [], [], [])


@pytest.mark.integration
def test_eval_of_a_model_against_its_own_answers_is_fifty_percent(tmp_path: Path) -> None:
    """AlpacaEval's layout, with the toy target's own greedy answers as the baseline: every prompt a tie."""
    from fusechat3.evaluation.stage import run_eval
    from fusechat3.recipe import load_recipe, resolve_model
    from fusechat3.run import Run
    from fusechat3.sampling import get_sampler
    from fusechat3.sampling.params import GenParams
    from fusechat3.toyworld import tasks

    instructions = [t.prompt for t in tasks.eval_tasks("instruction", 12)]
    # The transformers backend for both sides (starts in a second where vLLM takes ten; greedy either way).
    sampler = get_sampler("hf", resolve_model("toyworld:target"), max_model_len=512)
    try:
        outs = sampler.generate(
            [[{"role": "user", "content": q}] for q in instructions],
            GenParams(n=1, temperature=0.0, top_p=1.0, max_tokens=96),
        )
    finally:
        sampler.close()
    answers = [o[0].text for o in outs]
    assert all(o[0].finish_reason == "stop" for o in outs)
    path = tmp_path / "alpaca_eval.json"
    path.write_text(
        json.dumps(
            [{"instruction": q, "output": a, "generator": "target"} for q, a in zip(instructions, answers, strict=True)]
        )
    )
    recipe = load_recipe(
        ROOT / "recipes" / "toyworld" / "imf.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"eval.prompts=[{{builder: alpaca_eval, args: {{path: '{path}'}}}}]",
            "eval.judge={model: 'toyworld:reward', max_length: 512}",
            "sampler={backend: hf, engine: {max_model_len: 512}}",
        ],
    )
    result = run_eval(Run(recipe), only=["target_before"])
    figures = result["win_rates"]["target_before"]["alpaca_eval"]
    assert figures["n"] == 12 and figures["ties"] == 12 and figures["unjudged"] == 0
    assert figures["ci_low"] <= figures["win_rate"] == 50.0 <= figures["ci_high"]
    assert result["models"]["target_before"]["alpaca_eval"] == 0.5 and result["n"] == {"alpaca_eval": 12}
    md = (tmp_path / "run" / "eval" / "scoreboard.md").read_text()
    assert md.startswith("| model | alpaca_eval (win rate) | average |\n") and "| `target_before` | 50.0 | 50.0 |" in md
    assert (tmp_path / "run" / "eval" / "scoreboard.png").is_file()


def test_the_results_table_has_deltas_against_the_first_model(tmp_path: Path) -> None:
    from fusechat3.evaluation import table

    result = {
        "models": {
            "target_before": {"gsm8k": 0.5, "alpaca_eval": 0.25, "average": 0.375},
            "target_dpo": {"gsm8k": 0.625, "alpaca_eval": 0.5, "average": 0.5625},
        },
        "n": {"gsm8k": 8, "alpaca_eval": 4},
        "win_rates": {"target_dpo": {"alpaca_eval": {"win_rate": 50.0}}},
    }
    md = table.markdown(result).splitlines()
    assert md[0] == "| model | alpaca_eval (win rate) | gsm8k | average |"
    assert md[2] == "| `target_before` | 25.0 | 50.0 | 37.5 |"
    assert md[3] == "| `target_dpo` | 50.0 (+25.0) | 62.5 (+12.5) | 56.2 (+18.8) |"
    assert "alpaca_eval 4, gsm8k 8" in md[5]
    table.plot(result, tmp_path / "scoreboard.png")
    assert (tmp_path / "scoreboard.png").read_bytes()[:4] == b"\x89PNG"


def test_a_benchmark_with_no_check_and_no_baseline_gets_no_column() -> None:
    from fusechat3.evaluation.stage import _scores

    rows = [
        {"benchmark": "gsm8k", "domain": "math", "correct": True, "verdict": "passed"},
        {"benchmark": "gsm8k", "domain": "math", "correct": False, "verdict": "wrong_answer"},
        {"benchmark": "arena_hard", "domain": "instruction", "correct": False, "verdict": "unchecked"},
    ]
    scores, detail = _scores(rows, seed=0)
    assert scores == {"gsm8k": 0.5, "average": 0.5} and detail == {}


def test_the_table_shows_the_papers_numbers_for_the_same_target_and_benchmark() -> None:
    from fusechat3.evaluation import table

    result = {"models": {"target_before": {"alpaca_eval": 0.3, "gsm8k": 0.8, "average": 0.55}}, "n": {}}
    md = table.markdown(result, "meta-llama/Llama-3.1-8B-Instruct")
    assert "- alpaca_eval: 28.3 -> 65.4 (AlpacaEval 2 length-controlled win rate, GPT-4 Turbo judge)" in md
    assert "arena_hard" not in md  # not a column of this table
    assert "- the average over its 14 benchmarks (not the columns above): 40.5 -> 47.3" in md
    assert "FuseChat-3.0 paper" not in table.markdown(result, "toyworld:target")
