"""Near misses: the wrong answers an imperfect model writes, one generator per domain.

Two parts of the toy world use them. A source model is a generalist: it is trained on every
domain, and outside its specialty part of its training answers are near misses (`Learn.noise`
in `build.py`), so that at the sampling temperature it writes right and wrong answers to the
same prompt, as a real generalist does. And the toy reward model learns to rank the right
answer above near misses of it (pairwise, `build.train_reward`), the way real reward models
are trained on chosen/rejected pairs.

Every near miss differs from the task's ideal response; whether a code near miss fails its
hidden tests is the sandbox's call (a few pass by chance, as real mistakes sometimes do).
"""

from __future__ import annotations

import random

from fusechat3.toyworld import tasks as T

# Instruction near misses, by kind; `instruction_kinds` lists them (the reward model's accuracy
# is reported per kind).
INSTRUCTION_KINDS = ("family", "drop", "swap", "replace", "repeat", "copy", "extra", "cut")

# code family -> near-miss bodies ({xs}: the argument, {k}, {k1}: k + 1)
_CODE_NEAR: dict[str, tuple[str, ...]] = {
    "sum": ("return sum({xs}[1:])", "return max({xs})", "return len({xs})", "return sum({xs}) + 1"),
    "max": ("return min({xs})", "return {xs}[-1]", "return {xs}[0]", "return sum({xs})"),
    "count_even": (
        "return len([x for x in {xs} if x % 2 == 1])",
        "return sum([x for x in {xs} if x % 2 == 0])",
        "return len({xs})",
    ),
    "greater": (
        "return [x for x in {xs} if x < {k}]",
        "return [x for x in {xs} if x > {k1}]",
        "return [x for x in {xs} if x >= {k}]",
    ),
    "times": ("return [x * {k1} for x in {xs}]", "return [x + {k} for x in {xs}]", "return [x * x for x in {xs}]"),
}


def _instruction(task: T.Task, rng: random.Random, kind: str | None = None) -> str:
    words, times, good = task.meta["words"], task.meta["times"], task.response
    kind = kind or rng.choice(INSTRUCTION_KINDS)
    parts = good.split()
    if kind == "family":
        fam = rng.choice([f for f in T.INSTRUCTION_FAMILIES if f != task.family])
        resp = T.instruction_answer(fam, words, times)
    elif kind == "drop" and len(parts) > 1:
        parts.pop(rng.randrange(len(parts)))
        resp = " ".join(parts)
    elif kind == "swap" and len(parts) > 1:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
        resp = " ".join(parts)
    elif kind == "repeat" and len(parts) > 1:  # a word written twice: the typical slip of a small model
        i = rng.randrange(1, len(parts))
        parts[i] = parts[i - 1]
        resp = " ".join(parts)
    elif kind == "copy":
        resp = " ".join(words)
    elif kind == "extra":
        resp = good + " " + rng.choice(T.WORDS)
    elif kind == "cut" and len(good) > 1:
        resp = good[: max(1, len(good) // 2)]
    else:  # "replace", and the kinds a one-word answer cannot take
        parts = parts or [good]
        parts[rng.randrange(len(parts))] = rng.choice(T.WORDS)
        resp = " ".join(parts)
    return resp


def _math(task: T.Task, rng: random.Random) -> str:
    ans = task.meta["ans"]
    wrong = ans + rng.choice([-2, -1, 1, 1, 2, 10])
    if wrong < 0 or wrong == ans:
        wrong = ans + 1
    return f"{task.meta['expr']} = {wrong}. The answer is \\boxed{{{wrong}}}."


def _code(task: T.Task, rng: random.Random) -> str:
    m = task.meta
    body = rng.choice(_CODE_NEAR[task.family]).format(xs=m["arg"], k=m["k"], k1=m["k"] + 1)
    return f"```python\ndef {m['name']}({m['arg']}):\n    {body}\n```"


def _zh(task: T.Task, rng: random.Random) -> str:
    if task.family == "num":
        n = task.meta["n"]
        return T.zh_number(max(1, n + rng.choice([-2, -1, 1, 2, 10])) if n > 2 else n + rng.choice([1, 2, 10]))
    w = rng.choice([x for x in T.WORDS if x != task.meta["word"]])
    return T.ZH_WORDS[w]


_MAKERS = {"math": _math, "code": _code, "zh": _zh}


def near_miss(task: T.Task, rng: random.Random, kind: str | None = None) -> str:
    """A wrong answer to `task` that looks like what a weak model writes (never the ideal response).
    `kind`: an instruction near miss of that kind (`INSTRUCTION_KINDS`); random if None."""
    for _ in range(20):
        resp = _instruction(task, rng, kind) if task.domain == "instruction" else _MAKERS[task.domain](task, rng)
        if resp != task.response:
            return resp
        kind = None  # this kind cannot differ here (e.g. "family" where two families agree): any other
    raise AssertionError(f"no near miss found for {task.prompt!r}")
