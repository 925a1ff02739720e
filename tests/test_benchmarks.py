"""The benchmark builders (GSM8K, MATH-500, HumanEval(+), MBPP(+), AlpacaEval, Arena-Hard) on hand-written
fixtures in each dataset's public column layout: the right gold answer or tests reach the verifier, a known-correct
answer passes and a known-wrong one fails, and the win-rate benchmarks carry their baseline answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_builders import as_built, run_builder
from fusechat3.schema import prompt_meta
from fusechat3.scoring.verify import verify_many

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def rows(builder: str, **args) -> list[dict]:
    return as_built(run_builder(builder, args)).rows


def verdicts(prompt: dict, *responses: str) -> list[str]:
    return [v for _, v in verify_many([prompt] * len(responses), list(responses), timeout_s=10.0)]


def block(code: str) -> str:
    return f"Here is the program:\n```python\n{code}\n```\nIt passes the examples."


def test_gsm8k_grades_the_last_box_against_the_answer_after_its_marks() -> None:
    built = as_built(run_builder("gsm8k", {"path": str(FIXTURES / "gsm8k")}))
    assert built.skipped == {"no_gold": 1}
    natalia, pens = built.rows
    assert natalia["source_dataset"] == "openai/gsm8k" and natalia["domain"] == "math"
    assert natalia["messages"][-1]["content"].endswith("put your final answer within \\boxed{}.")
    assert verdicts(natalia, "48 + 24 = 72, so \\boxed{72}.", "48 + 48 = 96, so \\boxed{96}.") == [
        "passed",
        "wrong_answer",
    ]
    assert verdicts(pens, "\\boxed{6000}", "\\boxed{6,000}", "\\boxed{600}") == ["passed", "passed", "wrong_answer"]
    assert rows("gsm8k", path=str(FIXTURES / "gsm8k"), instruction="")[0]["messages"][-1]["content"].endswith("May?")


def test_math500_grades_latex_answers() -> None:
    polar, fraction = rows("math500", path=str(FIXTURES / "math500"))
    assert polar["gold"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert prompt_meta(polar)["subject"] == "Precalculus" and prompt_meta(polar)["level"] == 2
    assert verdicts(polar, "So $\\boxed{(3, \\frac{\\pi}{2})}$.", "So $\\boxed{(3, \\pi)}$.") == [
        "passed",
        "wrong_answer",
    ]
    assert verdicts(fraction, "\\boxed{\\frac{5}{6}}", "\\boxed{\\frac{2}{5}}", "I am not sure.") == [
        "passed",
        "wrong_answer",
        "no_answer",
    ]


HAS_CLOSE = (
    "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    "    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
    "            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n"
)


def test_humaneval_and_its_plus_tests_reach_the_sandbox() -> None:
    base = rows("humaneval", path=str(FIXTURES / "humaneval"))[0]
    plus = rows("humaneval", path=str(FIXTURES / "humanevalplus"), plus=True)[0]
    assert base["source_dataset"] == "openai/openai_humaneval" and plus["source_dataset"] == "evalplus/humanevalplus"
    assert "```python\nfrom typing import List" in base["messages"][-1]["content"]
    assert base["tests"][0].rstrip().endswith("check(has_close_elements)")
    off_by_one = HAS_CLOSE.replace("< threshold", "<= threshold")  # right on HumanEval's tests, not on the plus ones
    wrong = HAS_CLOSE.replace("return True", "return False")
    assert verdicts(base, block(HAS_CLOSE), block(off_by_one), block(wrong)) == ["passed", "passed", "test_failed"]
    assert verdicts(plus, block(HAS_CLOSE), block(off_by_one)) == ["passed", "test_failed"]
    assert prompt_meta(plus)["benchmark"] == "humanevalplus" and prompt_meta(base)["benchmark"] == "humaneval"


def test_mbpp_and_its_plus_tests_reach_the_sandbox() -> None:
    built = as_built(run_builder("mbpp", {"path": str(FIXTURES / "mbpp")}))
    assert built.skipped == {"no_tests": 1}
    shared, prime = built.rows
    assert "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10)))" in shared["messages"][-1]["content"]
    right = "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"
    memorised = "def similar_elements(a, b):\n    return (4, 5)\n"
    assert verdicts(shared, block(right), block(memorised)) == ["passed", "test_failed"]
    # The test imports run before the asserts.
    assert prime["tests"][0].startswith("import math\n")
    is_not_prime = "def is_not_prime(n):\n    return n > 1 and any(n % i == 0 for i in range(2, n))\n"
    assert verdicts(prime, block(is_not_prime), block("def is_not_prime(n):\n    return n % 2 == 0\n")) == [
        "passed",
        "test_failed",
    ]
    plus = rows("mbpp", path=str(FIXTURES / "mbppplus"), plus=True)[0]
    assert plus["source_dataset"] == "evalplus/mbppplus"
    assert verdicts(plus, block(right), block(memorised)) == ["passed", "test_failed"]


def test_instruction_benchmarks_carry_their_baseline_answers() -> None:
    alpaca = as_built(
        run_builder("alpaca_eval", {"path": str(FIXTURES / "alpaca_eval/alpaca_eval_gpt4_baseline.json")})
    )
    assert alpaca.skipped == {"no_baseline": 1}
    meta = prompt_meta(alpaca.rows[0])
    assert meta["baseline"].startswith("Some famous actors") and meta["baseline_model"] == "gpt4"
    assert alpaca.rows[0]["domain"] == "instruction"
    arena = FIXTURES / "arena_hard"
    joined = as_built(
        run_builder("arena_hard", {"path": str(arena / "train.jsonl"), "baseline": str(arena / "gpt-4-0314.jsonl")})
    )
    assert joined.skipped == {"no_baseline": 1} and prompt_meta(joined.rows[0])["baseline_model"] == "gpt-4-0314"
    assert prompt_meta(joined.rows[0])["baseline"].startswith("X:1")
    alone = rows("arena_hard", path=str(arena / "train.jsonl"))
    assert len(alone) == 2 and "baseline" not in prompt_meta(alone[0])
    # No exact-match check: the win-rate judge decides.
    assert verdicts(alpaca.rows[0], "Hugh Jackman.") == ["unchecked"]


def test_a_baseline_file_in_the_wrong_layout_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "answers.jsonl"
    bad.write_text(json.dumps({"question_id": "q", "model_id": "m", "choices": []}) + "\n")
    with pytest.raises(Exception, match=r"arena_hard builder: .*answers.jsonl: row 0: no choices\[0\]"):
        run_builder("arena_hard", {"path": str(FIXTURES / "arena_hard" / "train.jsonl"), "baseline": str(bad)})
