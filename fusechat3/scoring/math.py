"""Math answer verification: is the final answer of a response equal to the gold answer?

Built on math-verify (Hugging Face), which extracts the final answer from free text (a `\\boxed{...}`, an
"answer is ..." phrase, else the last LaTeX or plain number/expression) and compares it with the gold answer
symbolically (sympy) and numerically. This module only chooses its extraction settings, makes it safe to call
from any thread, and turns its result into a verdict:

- `(True, "passed")`: the extracted answer equals the gold answer;
- `(False, "wrong_answer")`: an answer was found and it differs;
- `(None, "no_answer")`: no answer could be extracted from the response (or the response is not text);
- `(None, "bad_gold")`: the gold answer itself cannot be parsed, a data problem, counted apart from the model's.

math-verify bounds each parse / comparison with `signal.alarm`, which only works in the main thread. In any other
thread the timeouts are switched off (math-verify's documented way), so a pathological answer such as
`9^{9^{9^9}}` could then take long; `verify_math_many(..., workers=N)` avoids that by verifying in worker
processes, whose main threads keep the timeouts.
"""

from __future__ import annotations

import logging
import math
import threading
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

Verdict = tuple[bool | None, str]


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


def _timeout_s(timeout_s: int) -> int | None:
    # signal.alarm only works in the main thread; elsewhere math-verify needs its timeouts disabled (None).
    return timeout_s if threading.current_thread() is threading.main_thread() else None


def _parse_gold(gold: str, timeout_s: int | None) -> list[Any]:
    from math_verify import parse

    gold_latex, gold_expr, _ = _configs()
    bare = gold.strip().strip("$").strip()
    if not bare:
        return []
    parsed = parse(f"${bare}$", gold_latex, parsing_timeout=timeout_s)
    return parsed or parse(bare, gold_expr, parsing_timeout=timeout_s)


def verify_math(response: str, gold: str, *, timeout_s: int = 5) -> Verdict:
    """Check the final answer of `response` against `gold`; never raises on odd input (see the module doc)."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    if not isinstance(gold, str) or not gold.strip():
        return None, "bad_gold"
    if not isinstance(response, str) or not response.strip():
        return None, "no_answer"
    limit = _timeout_s(timeout_s)
    try:
        gold_parsed = _parse_gold(gold, limit)
    except (Exception, TimeoutException):
        log.debug("math-verify could not parse gold %r", gold, exc_info=True)
        gold_parsed = []
    if not gold_parsed:
        return None, "bad_gold"
    try:
        answer = parse(response, _configs()[2], parsing_timeout=limit)
        if not answer:
            return None, "no_answer"
        ok = verify(gold_parsed, answer, timeout_seconds=limit)
    except (Exception, TimeoutException):
        # math-verify already turns its own errors into "no match"; this is the last guard for the rest.
        log.debug("math-verify failed on a response", exc_info=True)
        return None, "no_answer"
    return (True, "passed") if ok else (False, "wrong_answer")


def _verify_chunk(pairs: list[tuple[str, str]], timeout_s: int) -> list[Verdict]:
    return [verify_math(response, gold, timeout_s=timeout_s) for response, gold in pairs]


def verify_math_many(pairs: list[tuple[str, str]], *, workers: int = 1, timeout_s: int = 5) -> list[Verdict]:
    """`verify_math` over (response, gold) pairs, in order.

    workers <= 1 verifies in the calling thread. workers > 1 uses that many worker processes; they run each check
    in their main thread, so math-verify's timeouts stay on whatever thread calls this. They are forked from a
    fork server (never from this possibly threaded process, where a fork can deadlock) that imports math-verify
    and sympy once, so each worker starts in milliseconds instead of re-importing them.
    """
    pairs = list(pairs)
    if workers <= 1 or len(pairs) < 2:
        return _verify_chunk(pairs, timeout_s)

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
        results = pool.map(_verify_chunk, chunks, [timeout_s] * len(chunks))
        return [verdict for chunk in results for verdict in chunk]
