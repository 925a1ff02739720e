"""The shared prompt steps: what the prompts stage does to every spec's rows after its builder ran.

In this order, each dropped row counted by reason, per spec and per domain:

1. `math_prompt` / `code_prompt`: math and code prompts are removed from the `instruction` and `zh`
   domains (FuseChat-3.0 keeps them in their own domains, with verifiable answers). By the source's
   task category when it has one (`meta["category"]`, e.g. Magpie's "Math" and "Coding & Debugging"),
   else by the text heuristic of `heuristic` below. A spec with `keep_math_code: true` keeps them.
2. `contaminated`: with `decontamination:` in the recipe, a prompt sharing a word n-gram with a
   benchmark prompt (`ngram` words, 13 by default, after `normalise`; Chinese, Japanese and Korean
   characters count one word each) is dropped. A prompt of fewer words than `ngram` (on either side)
   is matched only by its whole word sequence.
3. `duplicate_prompt`: a prompt whose normalised text (NFKC, casefolded, whitespace collapsed,
   punctuation stripped at the ends; every message of a conversation) equals one kept before, by an
   earlier spec or earlier in the same one, is dropped: the first occurrence is kept.
4. `over_limit`: a spec's `fraction` and `limit` keep that fraction of its remaining rows, then at
   most `limit` of them, chosen by a hash of the prompt_id and the recipe seed (deterministic; a
   larger fraction or limit keeps a superset), in their original order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence

from data_builders import DUPLICATE, Built
from fusechat3.schema import prompt_meta

MATH, CODE, CONTAMINATED, OVER_LIMIT = "math_prompt", "code_prompt", "contaminated", "over_limit"
STEP_REASONS = (MATH, CODE, CONTAMINATED, DUPLICATE, OVER_LIMIT)

FILTERED_DOMAINS = ("instruction", "zh")  # the domains math and code prompts are removed from
MATH_CATEGORIES = {"math", "mathematics"}  # task categories (casefolded) that mean a math prompt
CODE_CATEGORIES = {"coding & debugging", "coding", "code", "programming"}  # ... a code prompt

# --------------------------------------------------------------------------- math/code heuristic
# For sources without a task category. Each pattern is one reason to call a prompt code (checked
# first) or math; they aim at prompts that ask to write code or to solve a math problem, not at
# prompts that merely mention numbers or programming.

_LANGUAGES = (
    r"python|java|javascript|typescript|c\+\+|c#|golang|rust|ruby|php|kotlin|swift|scala|haskell|perl|matlab"
    r"|sql|bash|shell|powershell|html|css|react|node\.js|django|flask|pandas|numpy"
)
_CODE_PATTERNS = [
    r"```",  # a code block
    r"(?m)^\s*(?:def|class)\s+\w+\s*[(:]",  # a Python definition
    r"\bdef\s+\w+\s*\(",
    r"#include\s*[<\"]",
    r"\b(?:public|private)\s+(?:static\s+)?(?:void|int|class)\b",  # Java / C#
    r"\b(?:function\s+\w+\s*\(|console\.log\(|System\.out\.print)",
    r"\b(?:write|implement|create|code|develop|generate|complete|fix|debug|optimi[sz]e|refactor)\s+"
    r"(?:a|an|the|this|my|some)?\s*(?:[\w+#.-]+\s+){0,2}?(?:function|code(?!\s+of\b)|snippet|algorithm|regex"
    r"|regular expression|unit tests?)\b",
    # "a program/script that ...", unless it is a film's or a show's script
    r"\b(?:write|create|develop|make)\s+(?:a|an)\s+(?:[\w+#.-]+\s+){0,2}?(?:program|script)\s+(?:that|which|to)\b"
    r"(?!.{0,60}\b(?:play|film|movie|video|scene|episode|commercial|podcast|show|speech|skit)\b)",
    rf"(?<![\w+#])(?:{_LANGUAGES})(?![\w+#]).{{0,60}}\b(?:code|function|script|program|class|method|snippet|query"
    r"|implementation)\b",
    r"\b(?:stack ?trace|traceback|syntax error|compil(?:e|er|ation) error|segmentation fault|null pointer)\b",
    r"代码|编程|程序设计|编写.{0,12}(?:函数|程序|脚本)|写一个.{0,12}(?:函数|程序|脚本)|算法实现",
]
_MATH_PATTERNS = [
    r"\\(?:frac|dfrac|sqrt|int|sum|prod|lim|cdot|times|div|infty|binom|log|ln|sin|cos|tan|le|ge|neq|pm|pi|theta)\b",
    r"\$(?![\d\s])[^$\n]{0,200}?[\\^_=+\-][^$\n]{0,200}?(?<!\s)\$",  # inline LaTeX ($x^2$; not "$5 and $10")
    r"\\\(|\\\[",
    r"\bsolve\s+(?:for\s+[a-z]\b|the\s+(?:equation|inequality|system)|\S*\s*=)",
    r"\b(?:find|determine|compute|calculate|evaluate|simplify)\s+(?:the\s+)?(?:value|sum|product|derivative|integral"
    r"|limit|roots?|area|volume|probability|remainder|expression)\b",
    r"\b(?:derivative|integral|quadratic|polynomial|logarithm|factorial|prime factori[sz]ation)\b",
    r"\b\d*[a-z]\s*(?:\^|\*\*)\s*\d",  # x^2, 3x**2
    r"\b\d+\s*[a-z]\s*[+\-]\s*\d+\s*=\s*-?\d",  # 2x + 3 = 7
    r"\b\d+(?:\.\d+)?\s*[+\-*/×÷^]\s*\d+(?:\.\d+)?\s*(?:=\s*\?|\?)",  # 12 * 34 = ?  /  12 * 34?
    r"\b(?:what is|calculate|compute|evaluate)\s+-?\d+(?:\.\d+)?\s*(?:[+\-*/×÷^]|plus|minus|times|divided by)\s*-?\d",
    r"解方程|方程组?|不等式|求.{0,12}的值|计算(?!机)|等于多少|概率是多少|导数|定积分|函数\s*[a-zA-Z]\s*\(",
]
_CODE = [re.compile(p, re.IGNORECASE) for p in _CODE_PATTERNS]
_MATH = [re.compile(p, re.IGNORECASE) for p in _MATH_PATTERNS]


def heuristic(text: str) -> str | None:
    """`code_prompt` or `math_prompt` if the text matches one of the patterns above, else None."""
    if any(p.search(text) for p in _CODE):
        return CODE
    if any(p.search(text) for p in _MATH):
        return MATH
    return None


def math_or_code(row: dict) -> str | None:
    """Why a prompt is a math or code prompt (`math_prompt`, `code_prompt`), or None: by its source's task
    category when it has one, else by the heuristic on its user messages."""
    category = prompt_meta(row).get("category")
    if isinstance(category, str) and category.strip():
        name = category.strip().casefold()
        return MATH if name in MATH_CATEGORIES else CODE if name in CODE_CATEGORIES else None
    return heuristic("\n".join(m["content"] for m in row["messages"] if m["role"] == "user"))


# --------------------------------------------------------------------------- normalisation, dedup


def _strip_ends(text: str) -> str:
    def edge(ch: str) -> bool:
        return ch.isspace() or unicodedata.category(ch).startswith("P")

    lo, hi = 0, len(text)
    while lo < hi and edge(text[lo]):
        lo += 1
    while hi > lo and edge(text[hi - 1]):
        hi -= 1
    return text[lo:hi]


def normalise(text: str) -> str:
    """Unicode NFKC, casefolded, whitespace collapsed to single spaces, punctuation stripped at the ends."""
    return _strip_ends(" ".join(unicodedata.normalize("NFKC", text).casefold().split()))


def dedup_key(row: dict) -> tuple:
    """What two prompts share when they are the same prompt: their normalised messages."""
    return tuple((m["role"], normalise(m["content"])) for m in row["messages"])


# --------------------------------------------------------------------------- decontamination

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def words(text: str) -> list[str]:
    """The normalised words of a text: letters and digits runs, and single CJK characters."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _grams(ws: list[str], n: int) -> set[str]:
    return {" ".join(ws[k : k + n]) for k in range(len(ws) - n + 1)}


class Decontaminator:
    """The word n-grams of benchmark prompts; `contaminated(row)` is True if a prompt shares one."""

    def __init__(self, benchmark: Sequence[dict], ngram: int = 13) -> None:
        self.n = ngram
        self.grams: set[str] = set()
        self.short: set[str] = set()  # whole word sequences of benchmark prompts shorter than n words
        for row in benchmark:
            ws = words(_text(row))
            if len(ws) >= ngram:
                self.grams |= _grams(ws, ngram)
            elif ws:
                self.short.add(" ".join(ws))

    def contaminated(self, row: dict) -> bool:
        ws = words(_text(row))
        if len(ws) < self.n:
            return " ".join(ws) in self.short
        return not self.grams.isdisjoint(_grams(ws, self.n))


def _text(row: dict) -> str:
    return "\n".join(m["content"] for m in row["messages"])


# --------------------------------------------------------------------------- limit and fraction


def _rank(seed: int, prompt_id: str) -> str:
    return hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()


def select(rows: list[dict], *, limit: int | None = None, fraction: float = 1.0, seed: int = 0) -> list[dict]:
    """`round(fraction * len(rows))` rows, then at most `limit`, those with the lowest hash of (seed, prompt_id),
    in their original order. Deterministic, and a larger fraction or limit keeps a superset."""
    keep = int(fraction * len(rows) + 0.5)
    if limit is not None:
        keep = min(keep, limit)
    if keep >= len(rows):
        return list(rows)
    chosen = set(sorted(range(len(rows)), key=lambda i: _rank(seed, rows[i]["prompt_id"]))[:keep])
    return [row for i, row in enumerate(rows) if i in chosen]


# --------------------------------------------------------------------------- all steps, with counts


def prepare(
    specs: Sequence, built: Sequence[Built], *, seed: int, benchmark: Sequence[dict] | None = None, ngram: int = 13
) -> tuple[list[dict], dict]:
    """The prompts kept from every spec's `Built` (specs: `.builder`, `.keep_math_code`, `.limit`,
    `.fraction`), and the report: kept rows and skips by reason, in total, per spec and per domain.

    Builder skips are counted per spec and in total (they have no domain: no row was made); the
    steps' skips are counted per domain as well."""
    decontaminate = Decontaminator(benchmark, ngram) if benchmark is not None else None
    kept_keys: set[tuple] = set()
    out: list[dict] = []
    spec_reports = []
    domain_skips: dict[str, Counter] = defaultdict(Counter)
    for i, (spec, b) in enumerate(zip(specs, built, strict=True)):
        skipped = Counter({reason: 0 for reason in STEP_REASONS})
        skipped.update(b.skipped)
        remaining, keys = [], set()
        for row in b.rows:
            reason = None
            if not spec.keep_math_code and row["domain"] in FILTERED_DOMAINS:
                reason = math_or_code(row)
            if reason is None and decontaminate is not None and decontaminate.contaminated(row):
                reason = CONTAMINATED
            if reason is None:
                key = dedup_key(row)
                reason = DUPLICATE if key in kept_keys or key in keys else None
                keys.add(key)
            if reason is None:
                remaining.append(row)
            else:
                skipped[reason] += 1
                domain_skips[row["domain"]][reason] += 1
        chosen = select(remaining, limit=spec.limit, fraction=spec.fraction, seed=seed)
        chosen_ids = {row["prompt_id"] for row in chosen}
        for row in remaining:
            if row["prompt_id"] not in chosen_ids:
                skipped[OVER_LIMIT] += 1
                domain_skips[row["domain"]][OVER_LIMIT] += 1
        kept_keys.update(dedup_key(row) for row in chosen)
        out.extend(chosen)
        spec_reports.append(
            {
                "spec": f"prompts[{i}]",
                "builder": spec.builder,
                "rows_in": len(chosen) + sum(skipped.values()),
                "rows_out": len(chosen),
                "skipped": dict(skipped),
                "domains": dict(Counter(row["domain"] for row in chosen)),
            }
        )
    totals = Counter({reason: 0 for reason in STEP_REASONS})
    for rep in spec_reports:
        totals.update(rep["skipped"])
    domains = Counter(row["domain"] for row in out)
    by_domain = {
        d: {"rows_out": domains.get(d, 0), "skipped": dict(domain_skips.get(d, {}))}
        for d in sorted(set(domains) | set(domain_skips))
    }
    report = {
        "rows_out": len(out),
        "domains": dict(domains),
        "skipped": dict(totals),
        "specs": spec_reports,
        "by_domain": by_domain,
    }
    return out, report


def report_lines(report: dict) -> list[tuple[str, int]]:
    """The report as (what, count) lines for the stage's summary table: non-zero counts only."""
    lines: list[tuple[str, int]] = []
    for rep in report["specs"]:
        name = f"{rep['spec']} {rep['builder']}"
        lines.append((f"{name}: kept", rep["rows_out"]))
        lines += [(f"{name}: skipped {why}", n) for why, n in sorted(rep["skipped"].items()) if n]
    for domain, rep in report["by_domain"].items():
        lines.append((f"domain {domain}: kept", rep["rows_out"]))
        lines += [(f"domain {domain}: skipped {why}", n) for why, n in sorted(rep["skipped"].items()) if n]
    lines.append(("total kept", report["rows_out"]))
    lines += [(f"total skipped: {why}", n) for why, n in sorted(report["skipped"].items()) if n]
    return lines
