"""Math answer verification: is the final answer of a response equal to the gold answer?

Built on math-verify (Hugging Face), which extracts the final answer from free text and compares it with the gold
answer symbolically (sympy) and numerically. This module chooses its extraction settings, adds the GSM8K `####`
convention, keeps math-verify's timeouts working, and turns its result into a verdict:

- `(True, "passed")`: the extracted answer equals the gold answer;
- `(False, "wrong_answer")`: an answer was found and it differs;
- `(False, "no_answer")`: no answer could be extracted from the response (or the response is not text): a
  response that never states a result is an incorrect one (the paper's rejected math responses are "incorrect
  answers"); `no_answer_is_wrong=False` (recipe `scoring.math.no_answer_is_wrong: false`) makes it
  `(None, "no_answer")`, neither right nor wrong, as before;
- `(None, "timeout")`: parsing or comparing took longer than `timeout_s` (e.g. `\\boxed{9^{9^{9^{9^{9}}}}}`), so
  the answer is neither right nor wrong; only reported where timeouts are on (see below);
- `(None, "bad_gold")`: the gold answer itself cannot be parsed, a data problem, counted apart from the model's.

One final answer is read from a response and compared with the gold, first rule that finds one wins:

1. the LAST `\\boxed{...}` (or `\\fbox{...}`) of the response, its braces balanced, as the math evaluation of
   the FuseChat-3.0 authors (the Qwen2.5-Math evaluation toolkit) grades it: a response that boxes 3, corrects
   itself and boxes 5 answers 5; `\\boxed{3} and \\boxed{5}` answers 5 too (a hedge gets no credit). A last box
   whose content does not parse (`\\boxed{}`) is no answer: the earlier boxes were not the final answer;
2. GSM8K style: the `#### <answer>` line: the response's last line when it holds `####` (what follows the last
   `####`), else the last line that is `####` followed by a plain number (a Markdown heading `#### Step 2` is
   not a number, so it is not read as an answer);
3. math-verify's anchors ("final answer is ...", "answer: ..."), then the last LaTeX or plain number/expression.

Spellings math-verify misreads are rewritten first, in responses and gold answers alike: `\\boxed {x}` as
`\\boxed{x}`, scientific notation (`1.5e3`) as a decimal (LaTeX parsing would read its `e` as Euler's number),
the currency sign `\\$` is dropped and the Unicode minus `\u2212` becomes `-`.

Gold answers: a bare answer (`42`, `\\frac{\\sqrt{3}}{2}`, `x^2+1`) is parsed as LaTeX inside `$...$`, since
unwrapped, `2\\sqrt{2}` would parse as `2` and match `\\boxed{2}`; a full GSM8K answer (rationale, then
`#### 1,000`) is reduced to what follows its last `####`; thousands separators (`1,000`) are removed; a gold that
holds a `\\boxed{}` (a worked MATH-style solution) is read like a response, by its last box.

Timeouts: math-verify bounds each parse / comparison with `signal.alarm`, which only works in a process's main
thread. It swallows its timeouts by default (a timed-out comparison reads as "different"); here they are raised
(`raise_on_error=True`) so they become the `timeout` verdict. In any other thread the timeouts must be switched off
(math-verify's documented way): a pathological answer could then run long, so `verify_math_many` checks in worker
processes, whose main threads keep the timeouts, whenever it is called off the main thread or with many pairs.
A limit of the signal approach: a computation stuck inside one C call (no Python bytecode running) is not
interrupted until that call returns.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from functools import cache
from itertools import product
from typing import Any

log = logging.getLogger(__name__)

Verdict = tuple[bool | None, str]

# A number written with thousands separators and nothing else: "1,000", "-12,345.5". Only exact 3-digit groups, so
# that "1,2" (a list of two answers) is left alone.
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Scientific notation ("1.5e3", "2E+5", "2.5e-4"): unconverted, LaTeX parsing reads the "e" as Euler's number.
# "2e-1" (no decimal point, minus) stays as it is: in a math answer it more likely means 2e - 1.
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+\.\d+[eE][+-]?\d{1,2}|\d+[eE]\+?\d{1,2})(?!\w)")
# "\boxed {x}": valid LaTeX, but math-verify's box patterns want the brace right after the command.
_SPACED_BOX = re.compile(r"\\(boxed|fbox)\s+\{")
# The opening of a box, "\boxed{" or "\fbox{" (after `_normalise`, no space before the brace).
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\{")
# A GSM8K answer line anywhere in a response: "#### 72", "#### $1,000.", "#### -3.5".
_GSM8K_NUMBER_LINE = re.compile(r"^[ \t]*####[ \t]*\$?[ \t]*(-?[\d,]*\.?\d+)[ \t]*\.?[ \t]*$", re.MULTILINE)
# Below this many pairs, `verify_math_many(workers=None)` called from the main thread checks in-process: the
# timeouts work there, and starting a pool (whose fork server imports sympy) costs more than the checks.
_POOL_MIN_PAIRS = 32


class _Timeout(Exception):
    """A parse or comparison ran out of time (math-verify's own TimeoutException derives from BaseException)."""


@cache
def _configs() -> tuple[list[Any], list[Any], list[Any]]:
    """Extraction configs: (gold as LaTeX, gold as plain expression, response)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # The gold is a bare answer ("42", "\frac{1}{2}", "x^2+1"): wrapped in $...$ the LaTeX extractor reads all
    # of these, plain numbers included; the plain-expression extractor is the fallback for what LaTeX rejects.
    gold_latex = [LatexExtractionConfig()]
    gold_expr = [ExprExtractionConfig()]
    # In a response a \boxed{} answer wins over everything else (priority 0, before "final answer is" phrases);
    # without one, math-verify takes the rightmost LaTeX or plain number/expression, i.e. the last one.
    response = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return gold_latex, gold_expr, response


def _limit(timeout_s: float) -> int | None:
    # signal.alarm takes whole seconds, and only works in the main thread; elsewhere math-verify needs None.
    if threading.current_thread() is not threading.main_thread():
        return None
    return max(1, math.ceil(timeout_s))


def _parse(text: str, config: list[Any], limit: int | None) -> list[Any]:
    """math-verify's parse, with its timeout raised as `_Timeout` and any other error read as "nothing found"."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return parse(text, config, parsing_timeout=limit, raise_on_error=True)
    except TimeoutException as e:
        raise _Timeout from e
    except Exception:
        log.debug("math-verify could not parse %.200r", text, exc_info=True)
        return []


def _has_expression(parsed: list[Any]) -> bool:
    return any(not isinstance(p, str) for p in parsed)


def _strip_thousands(text: str) -> str:
    return text.replace(",", "") if _THOUSANDS.fullmatch(text) else text


def _normalise(text: str) -> str:
    """Rewrite the few spellings math-verify misreads (see the module doc)."""
    from decimal import Decimal

    # "\$" is a currency sign (math-verify reads "$5" but not "\$5"), "\u2212" a minus sign.
    text = text.replace("\\$", "").replace("\u2212", "-")
    text = _SPACED_BOX.sub(r"\\\1{", text)
    return _SCIENTIFIC.sub(lambda m: format(Decimal(m[1]), "f"), text)


def _gold_answer(gold: str) -> str:
    """The bare answer of a gold label: after GSM8K's last `####`, without `$...$` and thousands separators."""
    if "####" in gold:
        gold = gold.rsplit("####", 1)[1]
    return _strip_thousands(_normalise(gold).strip().strip("$").strip().rstrip(".").strip())


def _last_box(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` whose braces balance, else None (rule 1)."""
    for m in reversed(list(_BOX_OPEN.finditer(text))):
        depth = 1
        for i in range(m.end(), len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[m.end() : i]
    return None


def _gsm8k_tail(response: str) -> str | None:
    """The answer of the response's `#### <answer>` line (rule 2 of the module doc), else None.

    What follows the last `####` when it sits on the response's last line; else the last line that is `####` and a
    plain number (GSM8K's answers are numbers), so that a closing remark after the answer line does not hide it
    while a Markdown `#### Step 2` heading in the middle of a solution is still not read as an answer.
    """
    if "####" not in response:
        return None
    tail = response.rsplit("####", 1)[1].strip()
    if tail and "\n" not in tail:
        return _strip_thousands(tail.strip("$ ").rstrip(".").strip())
    lines = _GSM8K_NUMBER_LINE.findall(response)
    return _strip_thousands(lines[-1]) if lines else None


def _final_answer(text: str, config: list[Any], limit: int | None) -> list[Any]:
    """math-verify's parses of the one final answer of a (normalised) response: rules 1-3 of the module doc."""
    box = _last_box(text)
    if box is not None:
        return _parse(f"\\boxed{{{box}}}", config, limit) if box.strip() else []
    tail = _gsm8k_tail(text)
    answer = _parse(tail, config, limit) if tail else []
    return answer if _has_expression(answer) else _parse(text, config, limit)


def _equal(gold: list[Any], answer: list[Any], limit: int | None) -> bool:
    """Any of the gold parses equals any of the answer parses; `_Timeout` if none does and a comparison timed out.

    Pair by pair (as math-verify's `verify` does internally) so that one timed-out or failing pair neither hides a
    later match nor reads as a plain mismatch.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    timed_out = False
    for g, a in product(gold, answer):
        try:
            if verify(g, a, timeout_seconds=limit, raise_on_error=True):
                return True
        except TimeoutException:
            timed_out = True
        except Exception:
            log.debug("math-verify could not compare an answer with the gold", exc_info=True)
    if timed_out:
        raise _Timeout
    return False


def verify_math(response: str, gold: str, *, timeout_s: float = 5, no_answer_is_wrong: bool = True) -> Verdict:
    """Check the final answer of `response` against `gold`; never raises on odd input (see the module doc).

    `timeout_s` bounds each parse and comparison (whole seconds, rounded up) in the main thread; in any other thread
    there is no timeout. `no_answer_is_wrong`: a response with no answer is `(False, "no_answer")`, else
    `(None, "no_answer")`.
    """
    no_answer: Verdict = (False if no_answer_is_wrong else None, "no_answer")
    if not isinstance(gold, str) or not gold.strip():
        return None, "bad_gold"
    if not isinstance(response, str) or not response.strip():
        return no_answer
    gold_latex, gold_expr, config = _configs()
    limit = _limit(timeout_s)
    try:
        if "\\boxed" in gold:
            # A worked solution (MATH style) rather than a bare answer: its (last) box is the answer.
            gold_parsed = _final_answer(_normalise(gold), config, limit)
        else:
            bare = _gold_answer(gold)
            gold_parsed = _parse(f"${bare}$", gold_latex, limit) if bare else []
            if not _has_expression(gold_parsed) and bare:
                gold_parsed = _parse(bare, gold_expr, limit)
        # math-verify also returns the raw matched text as a last resort (compared as a string); a gold answer
        # with nothing but that did not parse.
        if not _has_expression(gold_parsed):
            return None, "bad_gold"
        answer = _final_answer(_normalise(response), config, limit)
        if not answer:
            return no_answer
        ok = _equal(gold_parsed, answer, limit)
    except _Timeout:
        return None, "timeout"
    return (True, "passed") if ok else (False, "wrong_answer")


def _verify_chunk(pairs: list[tuple[str, str]], timeout_s: float, no_answer_is_wrong: bool = True) -> list[Verdict]:
    return [
        verify_math(response, gold, timeout_s=timeout_s, no_answer_is_wrong=no_answer_is_wrong)
        for response, gold in pairs
    ]


def verify_math_many(
    pairs: list[tuple[str, str]], *, workers: int | None = None, timeout_s: float = 5, no_answer_is_wrong: bool = True
) -> list[Verdict]:
    """`verify_math` over (response, gold) pairs, in order.

    workers: None (the default) picks: in the calling thread when that is the main thread and there are fewer
    than 32 pairs (timeouts work there, and a pool would cost more to start than it saves), else a pool of
    min(4, CPU count) processes. An int > 1 always uses that many processes; an int <= 1 always checks in the
    calling thread, without timeouts if that is not the main thread.

    Worker processes run each check in their main thread, so math-verify's timeouts stay on whatever thread calls
    this. They are forked from a fork server (never from this possibly threaded process, where a fork can
    deadlock) that imports math-verify and sympy once, so each worker starts in milliseconds instead of
    re-importing them.
    """
    pairs = list(pairs)
    if workers is None:
        in_main = threading.current_thread() is threading.main_thread()
        use_pool = bool(pairs) and not (in_main and len(pairs) < _POOL_MIN_PAIRS)
        workers = max(1, min(4, os.cpu_count() or 1))
    else:
        use_pool = workers > 1 and len(pairs) > 1
    if not use_pool:
        return _verify_chunk(pairs, timeout_s, no_answer_is_wrong)

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers, len(pairs))
    # A few chunks per worker: big enough to amortise the pickling, small enough to balance the load.
    size = math.ceil(len(pairs) / (workers * 4))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    ctx = multiprocessing.get_context("forkserver")
    # Only takes effect if this process has not started its fork server yet; otherwise workers import lazily.
    ctx.set_forkserver_preload([__name__, "math_verify"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = pool.map(_verify_chunk, chunks, [timeout_s] * len(chunks), [no_answer_is_wrong] * len(chunks))
        return [verdict for chunk in results for verdict in chunk]
