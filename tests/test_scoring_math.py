"""Tests for fusechat3.scoring.math: real math-verify extraction and comparison, verdicts, timeouts, worker pool."""

from __future__ import annotations

import threading
import time

import pytest

from fusechat3.scoring.math import verify_math, verify_math_many

# Every other verdict: correct is None. No answer is a wrong answer (the default `no_answer_is_wrong=True`).
CORRECT = {"passed": True, "wrong_answer": False, "no_answer": False}

GSM8K_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
# Dollar signs in the rationale: wrapped in $...$ whole, this gold would not parse; its answer follows "####".
GSM8K_GOLD_DOLLARS = (
    "Each shirt costs $5, so 4 shirts cost 4 * $5 = $<<4*5=20>>20.\n"
    "With the $3 hat she pays $20 + $3 = $<<20+3=23>>23.\n#### 23"
)
PATHOLOGICAL = "\\boxed{9^{9^{9^{9^{9}}}}}"  # sympy cannot settle whether this equals 1 in any useful time

CASES = [
    # (gold, response, expected verdict)
    # Integers and negative numbers.
    ("42", "Adding them up gives \\boxed{42}.", "passed"),
    ("42", "Adding them up gives \\boxed{41}.", "wrong_answer"),
    ("-7", "So the temperature is \\boxed{-7} degrees.", "passed"),
    ("-7", "\\boxed{7}", "wrong_answer"),
    ("-7", "The temperature dropped to \u22127 degrees.", "passed"),  # Unicode minus sign
    ("$-3$", "Total: $-3$", "passed"),
    # Without a box: an "answer is" phrase, else the last number (not the first).
    ("7", "First 3 apples, then 4 more, so 7 apples in total", "passed"),
    ("7", "First 7 apples, then 4 more, so 11 apples in total", "wrong_answer"),
    ("5", "The answer is 5, not 6.", "passed"),
    # A box beats a later number.
    ("7", "So \\boxed{7}. Check: 3 + 4 = 7, and 9 is wrong.", "passed"),
    # Fractions and decimals.
    ("\\frac{1}{2}", "\\boxed{0.5}", "passed"),
    ("0.5", "The answer is $\\frac{2}{4}$", "passed"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", "passed"),
    ("1/3", "\\boxed{\\frac13}", "passed"),
    ("\\frac{1}{3}", "\\boxed{0.333333}", "passed"),  # math-verify compares floats rounded to 6 places
    ("\\frac{1}{3}", "\\boxed{0.33}", "wrong_answer"),  # a coarsely rounded decimal is not the exact answer
    # Percentages: math-verify reads x% as x/100 and also accepts the bare x for a percentage gold.
    ("25\\%", "\\boxed{25\\%}", "passed"),
    ("0.25", "\\boxed{25\\%}", "passed"),
    ("25\\%", "\\boxed{25}", "passed"),
    ("25", "The answer is 25%", "passed"),
    # Units and currency.
    ("5", "\\boxed{5 \\text{ cm}}", "passed"),
    ("5", "\\boxed{5\\,\\mathrm{cm}}", "passed"),
    ("5", "The side is 5 cm long.", "passed"),
    ("5 \\text{ cm}", "\\boxed{5}", "passed"),
    ("5", "It costs $5.", "passed"),
    ("5", "It costs \\$5.", "passed"),
    # Thousands separators, in the gold and in the response.
    ("1000", "\\boxed{1,000}", "passed"),
    ("1,000", "\\boxed{1000}", "passed"),
    ("1000", "In total 1,000 people came.", "passed"),
    ("1234", "We get \\boxed{1,234}", "passed"),
    ("10,\\!080", "\\boxed{10080}", "passed"),
    # Several boxes: the last box is the final answer (the Qwen2.5-Math evaluation's rule, see the module doc).
    ("3, 5", "\\boxed{3} and \\boxed{5}", "wrong_answer"),  # not a set of answers: the last box, 5
    ("5", "\\boxed{3} and \\boxed{5}", "passed"),
    ("3", "\\boxed{3} or \\boxed{5}", "wrong_answer"),  # a hedge gets no credit
    # A corrected answer: the final box counts, right or wrong, however close the earlier box is.
    ("5", "\\boxed{3}, no wait: \\boxed{5}", "passed"),
    ("3", "\\boxed{3}, no wait: \\boxed{5}", "wrong_answer"),
    ("5", "So \\boxed{3}.\nWait, I made an error: \\boxed{5}", "passed"),
    ("5", "\\fbox{3}. Hmm, no: \\fbox{5}", "passed"),  # \fbox is a box too
    ("3", "\\fbox{3}. Hmm, no: \\fbox{5}", "wrong_answer"),
    ("3", "\\boxed{3}. Wait: \\boxed{}", "no_answer"),  # the final box is empty: the earlier one was withdrawn
    ("\\{1, 2\\}", "\\boxed{3}. Wait: \\boxed{\\{2, 1\\}}", "passed"),  # escaped braces inside the last box
    ("5", "\\boxed{5}. Check: 2 + 3 = 5, so \\boxed{5}", "passed"),
    (
        "5",
        "First guess \\boxed{3}. That is wrong because the two boxes hold five apples in all, not three: \\boxed{5}",
        "passed",
    ),
    (
        "3",
        "First guess \\boxed{3}. That is wrong because the two boxes hold five apples in all, not three: \\boxed{5}",
        "wrong_answer",
    ),
    # Boxes with spaces.
    ("7", "\\boxed{ 7 }", "passed"),
    ("7", "\\boxed {7}", "passed"),
    # Sets, tuples, intervals.
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", "passed"),
    ("1, 2", "\\boxed{2, 1}", "passed"),  # a list of solutions is a set
    ("(1, 2)", "\\boxed{(1, 2)}", "passed"),
    ("(1, 2)", "\\boxed{(2, 1)}", "wrong_answer"),
    ("[0, 1)", "\\boxed{[0, 1)}", "passed"),
    ("[0, 1)", "\\boxed{(0, 1]}", "wrong_answer"),
    # Equations.
    ("3", "\\boxed{x = 3}", "passed"),
    ("x = 3", "\\boxed{3}", "passed"),
    ("3", "So $x = 3$.", "passed"),
    # Square roots; the false positive of an unwrapped gold (2\sqrt{2} parsed as 2) must not come back.
    ("2\\sqrt{2}", "\\boxed{2}", "wrong_answer"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", "passed"),
    ("\\sqrt{2}", "\\boxed{2^{1/2}}", "passed"),
    ("2\\sqrt{2}", "\\boxed{2.828}", "wrong_answer"),  # 3 decimals of an exact answer
    # pi.
    ("\\pi", "\\boxed{\\pi}", "passed"),
    ("\\frac{\\pi}{2}", "\\boxed{\\pi/2}", "passed"),
    ("2\\pi", "\\boxed{6.28}", "wrong_answer"),
    # Scientific notation (unconverted, "1.5e3" would read as 1.5 * Euler's e * 3).
    ("1.5 \\times 10^{3}", "\\boxed{1500}", "passed"),
    ("1500", "\\boxed{1.5e3}", "passed"),
    ("0.00025", "The answer is 2.5e-4", "passed"),
    # LaTeX gold answers, symbolic answers, matrices, text answers.
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", "passed"),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{2}}{2}}", "wrong_answer"),
    ("x^2 + 2x + 1", "\\boxed{(x+1)^2}", "passed"),
    ("x^2+1", "We get \\boxed{1 + x^2}", "passed"),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
        "passed",
    ),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "\\boxed{\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}}",
        "wrong_answer",
    ),
    ("\\text{(B)}", "\\boxed{B}", "passed"),
    ("\\text{Monday}", "\\boxed{\\text{Monday}}", "passed"),
    # GSM8K: the full answer text as gold; "#### N" as the response's last line; a box still wins over it.
    (GSM8K_GOLD, "She sold 48 + 24 = 72 clips.\n#### 72", "passed"),
    (GSM8K_GOLD, "She sold 48 + 24 = 72 clips.\n#### 70", "wrong_answer"),
    (GSM8K_GOLD, "So she sold \\boxed{72} clips.", "passed"),
    ("She earned 2 * 500 = <<2*500=1000>>1000 dollars.\n#### 1,000", "#### 1000", "passed"),
    ("1000", "#### $1,000", "passed"),
    (GSM8K_GOLD_DOLLARS, "She pays \\boxed{23} dollars.", "passed"),
    (GSM8K_GOLD_DOLLARS, "She pays \\boxed{20} dollars.", "wrong_answer"),
    ("72", "My answer is 70? No, adding 48 and 24 gives 72.\n#### 72", "passed"),  # without the #### rule: 70
    ("72", "\\boxed{70}\n#### 72", "wrong_answer"),
    # A "#### <number>" line followed by a closing remark still answers (without it: the last number, 3); a
    # Markdown heading "#### Step 2" is not a number, so it is not read as the answer.
    ("72", "She sold 72 clips.\n#### 72\nLet me know if you need step 3.", "passed"),
    ("72", "#### 70\nNo, recount:\n#### 72\nDone in 2 steps.", "passed"),
    ("5", "#### Step 2\nAdd 2 and 3 to get 5.", "passed"),
    # Gold as a worked MATH-style solution: its box is the answer.
    ("The sum is $\\boxed{\\frac{1}{2}}$.", "So it is 0.5", "passed"),
    ("The sum is $\\boxed{2\\sqrt{2}}$.", "\\boxed{2}", "wrong_answer"),
    ("First $\\boxed{1}$, corrected: $\\boxed{\\frac{1}{2}}$.", "So it is 0.5", "passed"),  # its last box
    # Nothing to extract.
    ("72", "", "no_answer"),
    ("72", "I cannot solve this.", "no_answer"),
    ("5", "\\boxed{}", "no_answer"),
    ("72", "#### ", "no_answer"),
    # Gold that does not parse.
    ("\\left( \\right", "\\boxed{5}", "bad_gold"),
    ("", "\\boxed{5}", "bad_gold"),
]


def _expected(verdict: str) -> tuple[bool | None, str]:
    return CORRECT.get(verdict), verdict


@pytest.mark.parametrize(("gold", "response", "verdict"), CASES)
def test_verdict(gold: str, response: str, verdict: str) -> None:
    assert verify_math(response, gold) == _expected(verdict)


def test_no_answer_switch() -> None:
    # Default: a response that states no result is a wrong answer (a rejected response for DPO); with the recipe
    # switch `scoring.math.no_answer_is_wrong: false` it is neither right nor wrong, as before.
    assert verify_math("I cannot solve this.", "72") == (False, "no_answer")
    assert verify_math("I cannot solve this.", "72", no_answer_is_wrong=False) == (None, "no_answer")
    assert verify_math("", "72", no_answer_is_wrong=False) == (None, "no_answer")
    # The other verdicts do not depend on it.
    assert verify_math("\\boxed{72}", "72", no_answer_is_wrong=False) == (True, "passed")
    assert verify_math("\\boxed{5}", "", no_answer_is_wrong=False) == (None, "bad_gold")
    pairs = [("I cannot solve this.", "72"), ("\\boxed{71}", "72")]
    assert verify_math_many(pairs, workers=1, no_answer_is_wrong=False) == [
        (None, "no_answer"),
        (False, "wrong_answer"),
    ]
    assert verify_math_many(pairs, workers=2) == [(False, "no_answer"), (False, "wrong_answer")]


def test_odd_input_never_raises() -> None:
    assert verify_math(None, "5") == (False, "no_answer")  # type: ignore[arg-type]
    assert verify_math("\\boxed{5}", None) == (None, "bad_gold")  # type: ignore[arg-type]
    assert verify_math("\\boxed{\\frac{1}{0}} \\left( \\right \\\\ }}}{{", "1")[1] in {"wrong_answer", "no_answer"}


def test_timeout_is_its_own_verdict() -> None:
    # math-verify swallows its timeouts into "not equal" by default; here it must say "timeout", within the limit.
    start = time.monotonic()
    assert verify_math(PATHOLOGICAL, "1", timeout_s=1) == (None, "timeout")
    assert time.monotonic() - start < 10
    # The alarm is cleared afterwards: the next check is unaffected.
    assert verify_math("\\boxed{1}", "1", timeout_s=1) == (True, "passed")


def _in_thread(work) -> list:
    """Run `work` in a non-main thread (where signal-based timeouts cannot work); fail, never hang, if it does."""
    out: list = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as e:  # noqa: BLE001 - the test reports any failure of the thread
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "verification did not finish"
    assert not isinstance(out[0], BaseException), out[0]
    return out[0]


def test_in_process_from_a_worker_thread() -> None:
    # workers=1 checks in the calling thread: timeouts off there, verdicts unchanged.
    pairs = [(response, gold) for gold, response, _ in CASES]
    assert _in_thread(lambda: verify_math_many(pairs, workers=1)) == [_expected(v) for _, _, v in CASES]


def test_pool_keeps_order_and_timeouts_off_the_main_thread() -> None:
    # Called from a thread, the default (workers=None) must check in worker processes, whose main threads keep
    # the timeouts: in this thread the pathological answer would run for ever.
    cases = CASES[:12] + [("1", PATHOLOGICAL, "timeout")] + CASES[-12:]
    pairs = [(response, gold) for gold, response, _ in cases]
    assert _in_thread(lambda: verify_math_many(pairs, timeout_s=2)) == [_expected(v) for _, _, v in cases]
    assert verify_math_many([]) == []
