"""Tests for fusechat3.scoring.math: real math-verify extraction and comparison."""

from __future__ import annotations

import threading

import pytest

from fusechat3.scoring.math import verify_math, verify_math_many

CASES = [
    # (response, gold, expected verdict)
    ("Adding them up gives \\boxed{42}.", "42", (True, "passed")),
    ("Adding them up gives \\boxed{41}.", "42", (False, "wrong_answer")),
    # Without a box the last number is the answer, not the first.
    ("First 3 apples, then 4 more, so 7 apples in total", "7", (True, "passed")),
    ("First 7 apples, then 4 more, so 11 apples in total", "7", (False, "wrong_answer")),
    # A box beats a later number.
    ("So \\boxed{7}. Check: 3 + 4 = 7, and 9 is wrong.", "7", (True, "passed")),
    # Symbolic / numeric equivalence between LaTeX and plain forms.
    ("The answer is $\\frac{2}{4}$", "0.5", (True, "passed")),
    ("The answer is 0.5", "\\frac{1}{2}", (True, "passed")),
    ("We get \\boxed{\\sqrt{2}}", "\\sqrt{2}", (True, "passed")),
    ("We get \\boxed{x^2 + 1}", "1 + x^2", (True, "passed")),
    ("We get \\boxed{1,234}", "1234", (True, "passed")),
    ("Total: $-3$", "$-3$", (True, "passed")),
    # Nothing to extract.
    ("I do not know.", "5", (None, "no_answer")),
    ("", "5", (None, "no_answer")),
    ("\\boxed{}", "5", (None, "no_answer")),
]


@pytest.mark.parametrize(("response", "gold", "expected"), CASES)
def test_verify_math(response: str, gold: str, expected: tuple) -> None:
    assert verify_math(response, gold) == expected


def test_odd_input_never_raises() -> None:
    assert verify_math(None, "5") == (None, "no_answer")  # type: ignore[arg-type]
    assert verify_math("\\boxed{5}", "") == (None, "bad_gold")
    assert verify_math("\\boxed{5}", None) == (None, "bad_gold")  # type: ignore[arg-type]
    assert verify_math("\\boxed{\\frac{1}{0}} \\left( \\right \\\\ }}}{{", "1")[1] in {"wrong_answer", "no_answer"}
    # A power tower sympy cannot compare: the main-thread timeout (1 s) turns it into a wrong answer.
    assert verify_math("\\boxed{9^{9^{9^{9}}}}", "5", timeout_s=1) == (False, "wrong_answer")


def test_works_in_a_worker_thread() -> None:
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            results.extend(verify_math(r, g) for r, g, _ in CASES)
        except BaseException as e:  # noqa: BLE001 - the test reports any failure of the thread
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors
    assert results == [expected for _, _, expected in CASES]


def test_many_in_order_sequential_and_in_processes() -> None:
    pairs = [(r, g) for r, g, _ in CASES]
    expected = [e for _, _, e in CASES]
    assert verify_math_many(pairs) == expected
    assert verify_math_many(pairs, workers=2) == expected
    assert verify_math_many([]) == []
