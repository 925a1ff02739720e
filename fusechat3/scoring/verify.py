"""Correctness of responses, by the prompt's domain: the one place both scoring and
evaluation ask "is this response right?".

- math: the final answer against the prompt's `gold` (math-verify);
- code: the extracted program against the prompt's `tests` (the sandbox);
- any prompt whose `meta` carries a `reference` (the toy world's instruction and zh tasks):
  exact match after trimming white space;
- otherwise: None ("unchecked"), and the reward model alone judges.
"""

from __future__ import annotations

from collections.abc import Callable

from fusechat3.schema import prompt_meta


def verify_many(
    prompts: list[dict],
    texts: list[str],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
    batch_size: int = 16,
    no_answer_is_wrong: bool = True,
    fan_out: Callable[[Callable, list[tuple]], list] | None = None,
) -> list[tuple[bool | None, str]]:
    """(correct, verdict) for each (prompt row, response text) pair, in order.

    `no_answer_is_wrong`: a math response with no final answer is `(False, "no_answer")`, else `(None, "no_answer")`
    (recipe `scoring.math.no_answer_is_wrong`). `fan_out`: where the code sandbox's batches run
    (`scoring.sandbox_pool.run_tests_many`; None: a pool of threads here).
    """
    from fusechat3.scoring.code import extract_code, run_tests_many
    from fusechat3.scoring.math import verify_math_many

    out: list[tuple[bool | None, str]] = [(None, "unchecked")] * len(texts)
    math_idx, code_idx, code_jobs = [], [], []
    for i, (p, text) in enumerate(zip(prompts, texts, strict=True)):
        if p["domain"] == "math" and p.get("gold"):
            math_idx.append(i)
        elif p["domain"] == "code" and p.get("tests"):
            code = extract_code(text)
            if code is None:
                out[i] = (False, "no_code")
            else:
                code_idx.append(i)
                code_jobs.append((code, list(p["tests"])))
        else:
            ref = prompt_meta(p).get("reference")
            if ref is not None:
                ok = text.strip() == str(ref).strip()
                out[i] = (ok, "passed" if ok else "wrong_answer")
    # Samples of one prompt are often identical: check each distinct pair once.
    if math_idx:
        pairs = [(texts[i], prompts[i]["gold"]) for i in math_idx]
        distinct = list(dict.fromkeys(pairs))
        verdicts = dict(zip(distinct, verify_math_many(distinct, no_answer_is_wrong=no_answer_is_wrong), strict=True))
        for i, pair in zip(math_idx, pairs, strict=True):
            out[i] = verdicts[pair]
    if code_jobs:
        keys = [(code, tuple(tests)) for code, tests in code_jobs]
        distinct = list(dict.fromkeys(keys))
        results = run_tests_many(
            [(c, list(t)) for c, t in distinct],
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            workers=workers,
            batch_size=batch_size,
            fan_out=fan_out,
        )
        verdicts = dict(zip(distinct, results, strict=True))
        for i, key in zip(code_idx, keys, strict=True):
            out[i] = verdicts[key]
    return out
