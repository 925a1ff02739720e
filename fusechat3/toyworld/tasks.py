"""The toy world's tasks: four domains that mirror the paper's, each with checkable answers.

Every task is made by a seeded generator, so the same seed gives the same tasks on any
machine. Each domain is split into *families* (kinds of problem). The target knows one "common"
family per domain a little; each source knows every family of its specialty and some families
of the other domains (`build.SPECS`). So the knowledge that fusion has to move into the target
is real: whole families the target never saw.

- math: arithmetic word problems; gold answer checked by math-verify.
- code: small Python functions over a list; hidden assert tests run in the sandbox.
- instruction: word transformations; a reference answer, and the toy reward model judges.
- zh: English words and numbers to Chinese (SFT only, one source, as in the paper).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from fusechat3.errors import UserError

NAMES = ["Ann", "Bob", "Cara", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivy", "Jon"]
ITEMS = ["apples", "pears", "books", "coins", "stones", "cards", "shells", "pens", "cups", "keys"]
WORDS = (
    "cat dog sun tree book fish bird moon star cup hat pen box car ship lamp door rock leaf "
    "ring bell road king rose milk salt gold wind rain snow"
).split()
ZH_DIGITS = "零一二三四五六七八九"


@dataclass(frozen=True)
class Task:
    """One toy problem: the user prompt, the ideal response, and what checks it."""

    domain: str
    family: str
    prompt: str
    response: str  # the ideal assistant response (what a perfect model writes)
    gold: str | None = None  # math: the final answer
    tests: tuple[str, ...] | None = None  # code: assert statements
    reference: str | None = None  # instruction / zh: the exact expected answer
    meta: dict = field(default_factory=dict, compare=False, hash=False)


# ---------------------------------------------------------------- math


def _math(family: str, rng: random.Random) -> Task:
    n, m = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    if family == "add":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        q = f"{n} has {a} {item}. {n} finds {b} more. How many {item} does {n} have now?"
        expr, ans = f"{a} + {b}", a + b
    elif family == "sub":
        a = rng.randint(3, 12)
        b = rng.randint(1, a - 1)
        q = f"{n} has {a} {item}. {n} gives {b} to {m}. How many {item} does {n} have left?"
        expr, ans = f"{a} - {b}", a - b
    elif family == "mul":
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        q = f"{n} has {a} boxes. Each box holds {b} {item}. How many {item} does {n} have?"
        expr, ans = f"{a} * {b}", a * b
    elif family == "div":
        b, ans = rng.randint(2, 6), rng.randint(2, 6)
        a = b * ans
        q = f"{n} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        expr = f"{a} / {b}"
    else:
        raise ValueError(f"unknown math family {family!r}")
    resp = f"{expr} = {ans}. The answer is \\boxed{{{ans}}}."
    return Task("math", family, q, resp, gold=str(ans), meta={"expr": expr, "ans": ans})


# ---------------------------------------------------------------- code

# family -> (spec with {k}, body with {k}, python function computing the answer)
CODE_FAMILIES: dict[str, tuple[str, str]] = {
    "sum": ("returns the sum of the numbers in xs", "return sum(xs)"),
    "max": ("returns the largest number in xs", "return max(xs)"),
    "count_even": ("returns how many numbers in xs are even", "return len([x for x in xs if x % 2 == 0])"),
    "greater": ("returns the numbers in xs that are greater than {k}", "return [x for x in xs if x > {k}]"),
    "times": ("returns each number in xs multiplied by {k}", "return [x * {k} for x in xs]"),
}


def _code(family: str, rng: random.Random) -> Task:
    spec, body = CODE_FAMILIES[family]
    k = rng.randint(2, 9)
    arg = rng.choice(["xs", "nums", "values", "items", "data", "arr"])
    spec, body = spec.format(k=k).replace("xs", arg), body.format(k=k).replace("xs", arg)
    name = rng.choice(["f", "g", "solve", "calc", "compute", "func"])
    code = f"def {name}({arg}):\n    {body}"
    env: dict = {}
    exec(code, env)  # our own reference code, to compute the expected test values
    calls = []
    for _ in range(3):
        xs = [rng.randint(0, 12) for _ in range(rng.randint(3, 6))]
        if family == "count_k":
            xs[rng.randrange(len(xs))] = k
        calls.append((xs, env[name](list(xs))))
    # Like LeetCode prompts, the prompt shows one example; the other tests stay hidden.
    q = f"Write a Python function {name}({arg}) that {spec}. Example: {name}({calls[0][0]!r}) == {calls[0][1]!r}"
    tests = tuple(f"assert {name}({xs!r}) == {want!r}" for xs, want in calls)
    meta = {"name": name, "arg": arg, "k": k}
    return Task("code", family, q, f"```python\n{code}\n```", tests=tests, meta=meta)


# ---------------------------------------------------------------- instruction

INSTRUCTION_FAMILIES = ("reverse", "upper", "first", "repeat", "last")


def instruction_answer(family: str, words: list[str], times: int = 0) -> str:
    """The exact answer of an instruction task (shared with the reward model's data)."""
    if family == "reverse":
        return " ".join(reversed(words))
    if family == "upper":
        return " ".join(w.upper() for w in words)
    if family == "first":
        return " ".join(w[0] for w in words)
    if family == "repeat":
        return " ".join([words[0]] * times)
    if family == "last":
        return words[-1]
    if family == "plural":
        return " ".join(w + "s" for w in words)
    if family == "join":
        return "-".join(words)
    raise ValueError(f"unknown instruction family {family!r}")


def general_tasks(n: int, seed: int) -> list[Task]:
    """A general skill every chat model has before any specialising: repeating words back.
    Not a domain family (it is never evaluated); the target learns it so that it can copy
    from its prompt, as any real target model can, and fusion teaches it the rest."""
    rng = random.Random(f"general:{seed}")
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 6))
        text = " ".join(words)
        q = rng.choice([f"Repeat these words: {text}", f"Say again: {text}", f"Copy: {text}"])
        out.append(Task("general", "copy", q, text))
    return out


def _instruction(family: str, rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(3, 5))
    times = rng.randint(2, 5)
    text = " ".join(words)
    q = {
        "reverse": f"Reverse the order of the words: {text}",
        "upper": f"Write the words in capital letters: {text}",
        "first": f"Give the first letter of each word: {text}",
        "repeat": f"Repeat the word {words[0]} {times} times.",
        "last": f"Which word comes last: {text}",
        "plural": f"Make each word plural: {text}",
        "join": f"Join the words with dashes: {text}",
    }[family]
    ans = instruction_answer(family, words, times)
    return Task("instruction", family, q, ans, reference=ans, meta={"words": words, "times": times})


# ---------------------------------------------------------------- zh


def zh_number(n: int) -> str:
    """1..99 in Chinese numerals (十, 十五, 二十, 四十七)."""
    tens, ones = divmod(n, 10)
    out = ("" if tens == 1 else ZH_DIGITS[tens]) + "十" if tens else ""
    return out + (ZH_DIGITS[ones] if ones else "")


ZH_WORDS = dict(
    zip(
        WORDS,
        "猫 狗 日 树 书 鱼 鸟 月 星 杯 帽 笔 盒 车 船 灯 门 石 叶 环 铃 路 王 花 奶 盐 金 风 雨 雪".split(),
        strict=True,
    )
)


def _zh(family: str, rng: random.Random) -> Task:
    if family == "num":
        n = rng.randint(1, 30)
        q = rng.choice(
            [
                f"把 {n} 写成汉字。",
                f"请用中文写出数字 {n}。",
                f"{n} 的中文是什么？",
                f"{n} 用汉字怎么写？",
                f"数字 {n} 的汉字是？",
            ]
        )
        ans = zh_number(n)
        meta = {"n": n}
    elif family == "word":
        w = rng.choice(WORDS)
        q = rng.choice(
            [
                f"{w} 的中文是什么？",
                f"把 {w} 翻译成中文。",
                f"请把英文单词 {w} 翻译成中文。",
                f"{w} 用中文怎么说？",
                f"英文 {w} 是什么意思？",
            ]
        )
        ans = ZH_WORDS[w]
        meta = {"word": w}
    else:
        raise ValueError(f"unknown zh family {family!r}")
    return Task("zh", family, q, ans, reference=ans, meta=meta)


# ---------------------------------------------------------------- the world

FAMILIES: dict[str, tuple[str, ...]] = {
    "math": ("add", "sub", "mul", "div"),
    "code": tuple(CODE_FAMILIES),
    "instruction": INSTRUCTION_FAMILIES,
    "zh": ("num", "word"),
}
# The family per domain that every model of the toy world (the target too) knows a little.
COMMON: dict[str, str] = {"math": "add", "code": "sum", "instruction": "reverse"}
_MAKERS = {"math": _math, "code": _code, "instruction": _instruction, "zh": _zh}

# Seeds of the disjoint pools: evaluation prompts have their own generator and are kept
# out of every other pool by prompt text.
SPLIT_SEEDS = {"eval": 1_000_003, "fusion": 2_000_003, "pretrain": 3_000_003}
EVAL_N = 100  # evaluation tasks reserved per domain


def make_task(domain: str, family: str, rng: random.Random) -> Task:
    return _MAKERS[domain](family, rng)


def generate(
    domain: str,
    n: int,
    seed: int,
    families: tuple[str, ...] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    unique: bool = True,
) -> list[Task]:
    """`n` tasks of `domain`, families drawn uniformly, none whose prompt is in `exclude`."""
    fams = families or FAMILIES[domain]
    rng = random.Random(f"{domain}:{seed}")
    out: list[Task] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise UserError(
                f"toy world: cannot make {n} distinct {domain} tasks from families {fams}; ask for fewer (per_domain)"
            )
        t = make_task(domain, rng.choice(fams), rng)
        if t.prompt in exclude or (unique and t.prompt in seen):
            continue
        seen.add(t.prompt)
        out.append(t)
    return out


def eval_tasks(domain: str, n: int, seed: int = 0) -> list[Task]:
    """The held-out evaluation tasks of a domain (own seeded generator)."""
    return generate(domain, n, SPLIT_SEEDS["eval"] + seed)


def eval_prompts(n: int = EVAL_N, seed: int = 0) -> frozenset[str]:
    """Prompt texts reserved for evaluation: every other pool excludes them."""
    return frozenset(t.prompt for d in FAMILIES for t in eval_tasks(d, n, seed))


def split_tasks(domain: str, n: int, split: str, seed: int = 0, families=None) -> list[Task]:
    """Tasks of a split: 'eval' (held out), 'fusion' (the fusion prompt pool, distinct prompts)
    or 'pretrain' (the models' own training data, repeats allowed)."""
    if split == "eval":
        if n > EVAL_N:
            raise UserError(
                f"toy world: at most {EVAL_N} evaluation tasks per domain, asked for {n}; lower per_domain to {EVAL_N}"
            )
        return eval_tasks(domain, n, seed)
    if split not in SPLIT_SEEDS:
        raise UserError(f"toy world: unknown split {split!r}; use one of {sorted(SPLIT_SEEDS)}")
    exclude = eval_prompts(EVAL_N, seed)
    return generate(domain, n, SPLIT_SEEDS[split] + seed, families=families, exclude=exclude, unique=split == "fusion")
