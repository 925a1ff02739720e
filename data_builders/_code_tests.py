"""Test extraction for the paper's code sources: turn a dataset row into assert tests for the sandbox.

Used by the prompt builders `data_builders.self_oss_instruct` and `data_builders.leetcode` (scoring only runs the
tests they produce, through `fusechat3.scoring.code`).

- self-oss-instruct-sc2 (`bigcode/self-oss-instruct-sc2-exec-filter-50k`): the reference `response` holds the
  solution and, in its `[Tests]` part (or inline, after the code), `assert` statements in ```python blocks.
  `asserts_from_response` returns the top-level ones (a `for` loop of asserts counts as one; asserts inside
  function bodies, e.g. pytest-style `def test_...`, do not, nor do those of functions the program defines).
- LeetCode (`greengerong/leetcode`: `content` is the statement in markdown, `python` the reference solution):
  the examples sit in the statement (`**Input:** nums = [2,7,11,15], target = 9` / `**Output:** [0,1]`, or
  `<strong>Input:</strong>` in LeetCode's own HTML). `leetcode_tests` builds one assert per example, calling the
  reference's entry point (`Solution().twoSum(...)` when it is a `class Solution`, else the function) with the
  values positionally, as LeetCode's judge does, so that a response that renames a parameter still passes. Every
  built test is then run against the reference solution in the sandbox and kept only if it passes: a wrong
  extraction must not become a test. Examples that cannot be used are dropped and counted by reason.

Standard library only (plus the sandbox); no dataset is downloaded here: the data builders pass the rows in.
"""

from __future__ import annotations

import ast
import html
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fusechat3.scoring.code import PYTHON_TAGS, code_blocks, extract_code, run_tests_many

# ---------------------------------------------------------------------------------------------------------------
# self-oss-instruct: asserts in the response

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _has_assert(node: ast.AST) -> bool:
    """Whether `node` is or contains an assert that runs when it does (not one inside a def, class or lambda)."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, _SCOPES):
        return False
    return any(_has_assert(child) for child in ast.iter_child_nodes(node))


def _is_main_guard(node: ast.stmt) -> bool:
    # `if __name__ == "__main__":` — the sandbox runs the program as module `solution`, so this never runs there:
    # the asserts under it are taken out of it.
    if not isinstance(node, ast.If) or node.orelse:
        return False
    test = node.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _source(block: str, node: ast.stmt) -> str:
    text = ast.get_source_segment(block, node) or ""
    try:
        ast.parse(text)
        return text
    except (SyntaxError, ValueError):  # a segment from an indented body whose lines keep their indentation
        return ast.unparse(node)


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    for node in body:
        out.extend(_top_level(node.body) if _is_main_guard(node) else [node])
    return out


def asserts_from_response(text: str) -> list[str]:
    """The test snippets of a self-oss-instruct-style response, in order, each valid Python on its own.

    From every ```python (or untagged) block, else from the whole text when it has no blocks: each top-level
    statement that is or contains an assert (not inside a function or class) is one test. In a block that
    defines nothing (a pure test block), the statements before an assert that set it up (`import math`,
    `finder = PrimeFinder()`) are kept with it, since later asserts may use them; in a block that also holds
    the solution, those statements are the solution's and are left to it. Exact duplicates are dropped."""
    if not isinstance(text, str):
        return []
    blocks = code_blocks(text)
    bodies = [body for tag, body in blocks if tag in PYTHON_TAGS | {""}] if blocks else [text]
    tests: list[str] = []
    for block in bodies:
        try:
            tree = ast.parse(block)
        except (SyntaxError, ValueError):
            continue
        statements = _top_level(tree.body)
        pure_tests = not any(isinstance(node, _SCOPES) for node in statements)
        setup: list[str] = []
        for node in statements:
            if _has_assert(node):
                tests.append("\n".join([*setup, _source(block, node)]))
                setup = []
            elif pure_tests:
                setup.append(_source(block, node))
    return list(dict.fromkeys(tests))


# ---------------------------------------------------------------------------------------------------------------
# LeetCode: examples in the statement, checked against the reference solution

_MARKDOWN_ESCAPE = re.compile(r"\\([\[\]()_*~`])")
_HTML = re.compile(r"</?(?:p|pre|strong|b|code|em|ul|li|sup|sub|div|span)\b[^<>]*>", re.IGNORECASE)
_BOLD_TAG = re.compile(r"<\s*/?\s*(?:strong|b)\b[^<>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*>")
_EXAMPLE = re.compile(
    r"\*\*\s*Input\s*:?\s*\*\*\s*:?(?P<input>.*?)"
    r"\*\*\s*Output\s*:?\s*\*\*\s*:?(?P<output>.*?)"
    r"(?=\*\*\s*(?:Explanation|Example|Constraints|Note|Follow)|\n[ \t]*\n|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_JSON_NAMES = {"true": True, "false": False, "null": None}
FLOAT_TOLERANCE = 1e-5  # LeetCode accepts floating-point answers within 1e-5


class _Drop(Exception):
    """An example that cannot become a test; args[0] is the reason counted."""


def _normalise(statement: str) -> str:
    # LeetCode's HTML: <strong>Input:</strong> -> **Input:**, other tags dropped, entities decoded. greengerong's
    # markdown escapes brackets (`\[2,7\]`).
    if _HTML.search(statement):  # markdown has `1 <= n` and `a > b`: no tag stripping there
        statement = html.unescape(_ANY_TAG.sub("", _BOLD_TAG.sub("**", statement)))
    return _MARKDOWN_ESCAPE.sub(r"\1", statement).replace("\xa0", " ")


def examples(statement: str) -> list[tuple[str, str]]:
    """The (input, output) texts of a LeetCode statement's examples, in order."""
    if not isinstance(statement, str):
        return []
    return [(m["input"].strip(), m["output"].strip()) for m in _EXAMPLE.finditer(_normalise(statement))]


class _JsonNames(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Constant(_JSON_NAMES[node.id]) if node.id in _JSON_NAMES else node


def _literal(node: ast.expr, what: str) -> Any:
    try:
        return ast.literal_eval(_JsonNames().visit(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise _Drop(f"unparsable_{what}") from e


def _parse_input(text: str) -> list[tuple[str, Any]]:
    """`nums = [2,7,11,15], target = 9` -> [("nums", [2, 7, 11, 15]), ("target", 9)], parsed as the keyword
    arguments of a call (so commas inside values need no care)."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise _Drop("unnamed_input" if "\n" in text else "unparsable_input") from e
    assert isinstance(call, ast.Call)
    if call.args or not call.keywords or any(k.arg is None for k in call.keywords):
        raise _Drop("unnamed_input")  # design problems: ["MinStack","push",...] then [[],[-2],...]
    return [(k.arg, _literal(k.value, "input")) for k in call.keywords if k.arg is not None]


def _parse_output(text: str) -> Any:
    # The whole text, else its first line (an unmarked explanation may follow on the next ones).
    for candidate in (text, text.split("\n", 1)[0]):
        try:
            return _literal(ast.parse(candidate, mode="eval").body, "output")
        except (SyntaxError, ValueError, MemoryError, RecursionError, _Drop):
            continue
    raise _Drop("unparsable_output")


def _entry_points(code: str) -> list[tuple[str, list[str]]]:
    """(callee text, positional parameter names) of the public functions a test may call, in source order:
    the methods of `class Solution` when there is one, else the top-level functions."""
    tree = ast.parse(code)

    def params(fn: ast.FunctionDef | ast.AsyncFunctionDef, skip: int) -> list[str]:
        return [a.arg for a in [*fn.args.posonlyargs, *fn.args.args][skip:]]

    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Solution":
            return [
                (f"Solution().{fn.name}", params(fn, 1))
                for fn in node.body
                if isinstance(fn, functions) and not fn.name.startswith("_")
            ]
    return [(fn.name, params(fn, 0)) for fn in tree.body if isinstance(fn, functions) and not fn.name.startswith("_")]


def _choose(entries: list[tuple[str, list[str]]], names: list[str]) -> tuple[str, list[str]]:
    """The entry point whose parameters are the example's names; else the only (or last) one of that arity."""
    for callee, params in entries:
        if sorted(params) == sorted(names):
            return callee, params
    same_arity = [(callee, params) for callee, params in entries if len(params) == len(names)]
    if not same_arity:
        raise _Drop("no_entry_point")
    return same_arity[-1][0], names  # helpers usually come first; the names' order is the statement's


def _assert(callee: str, args: list[Any], expected: Any) -> str:
    call = f"{callee}({', '.join(repr(a) for a in args)})"
    if isinstance(expected, float) and math.isfinite(expected):
        return f"assert abs({call} - {expected!r}) <= {FLOAT_TOLERANCE!r}"
    return f"assert {call} == {expected!r}"


def _strip_artifact(value: Any) -> Any:
    # greengerong's markdown turned `<code>"abc"</code>` into `"abc "`: a trailing space inside every string.
    if isinstance(value, str):
        return value[:-1] if value.endswith(" ") else value
    if isinstance(value, list):
        return [_strip_artifact(v) for v in value]
    return value


def _candidates(inp: str, out: str, entries: list[tuple[str, list[str]]]) -> list[str]:
    """The test for one example, then (when it differs) the same with greengerong's string artifact removed."""
    named = _parse_input(inp)
    expected = _parse_output(out)
    callee, order = _choose(entries, [name for name, _ in named])
    values = dict(named)
    args = [values[name] for name in order]
    raw = _assert(callee, args, expected)
    repaired = _assert(callee, _strip_artifact(args), _strip_artifact(expected))
    return [raw] if repaired == raw else [raw, repaired]


def leetcode_tests_many(
    problems: Sequence[tuple[str, str]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
) -> list[tuple[list[str], dict[str, int]]]:
    """`leetcode_tests` over (statement, reference solution) pairs, with every reference check in one pool."""
    results: list[tuple[list[str], Counter[str]]] = []
    pending: list[tuple[int, str, list[str]]] = []  # (problem index, reference code, candidate tests)
    for statement, reference in problems:
        dropped: Counter[str] = Counter()
        results.append(([], dropped))
        found = examples(statement)
        if not found:
            dropped["no_examples"] += 1
            continue
        code = extract_code(reference) if isinstance(reference, str) else None
        try:
            entries = _entry_points(code) if code else None
        except (SyntaxError, ValueError):
            entries = None
        if entries is None:
            dropped["no_reference"] += len(found)
            continue
        for inp, out in found:
            try:
                pending.append((len(results) - 1, code, _candidates(inp, out, entries)))
            except _Drop as drop:
                dropped[drop.args[0]] += 1
    # Check each candidate against the reference; where the raw test fails, its repaired variant is checked next.
    chosen: list[str | None] = [None] * len(pending)
    reasons = [""] * len(pending)
    for attempt in (0, 1):
        todo = [i for i, (_, _, tests) in enumerate(pending) if chosen[i] is None and len(tests) > attempt]
        checked = run_tests_many(
            [(pending[i][1], [pending[i][2][attempt]]) for i in todo],
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            workers=workers,
        )
        for i, (passed, verdict) in zip(todo, checked, strict=True):
            if passed:
                chosen[i] = pending[i][2][attempt]
            elif attempt == 0:
                reasons[i] = verdict  # a failed repair keeps the raw test's reason
    for (index, _, _), test, reason in zip(pending, chosen, reasons, strict=True):
        kept, dropped = results[index]
        if test is None:
            dropped[f"reference_{reason}"] += 1
        elif test not in kept:
            kept.append(test)
    return [(kept, dict(dropped)) for kept, dropped in results]


def leetcode_tests(
    statement: str,
    reference_solution: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
) -> tuple[list[str], dict[str, int]]:
    """Assert tests from a LeetCode statement's examples that the reference solution passes, and the examples
    dropped, counted by reason: `unnamed_input` (not `name = value`, e.g. design problems),
    `unparsable_input` / `unparsable_output` (not a Python or JSON literal), `no_entry_point` (no function of
    that arity in the reference), `no_reference` (no Python that parses in the reference solution), `reference_<verdict>`
    (the reference does not pass it: a ListNode/TreeNode problem, an in-place one, an answer "in any order", or a
    wrong extraction). `no_examples` counts a statement without examples once."""
    return leetcode_tests_many(
        [(statement, reference_solution)], timeout_s=timeout_s, memory_mb=memory_mb, workers=workers
    )[0]
