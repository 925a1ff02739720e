"""Reading a model's answer as a program, before anything runs: pull the code out of the response, then check
it statically.

Extraction (`extract_code`): the program is the response's Python blocks that define a function or class, in
order, joined as one file (the ```python blocks, else the untagged ones; blocks in other languages are not
Python), without the usage blocks, earlier drafts that later blocks redefine, and the model's own top-level
checks; else the whole text when it is Python that defines a function. Decided statically with `ast`: nothing
runs. See `extract_code` for the rule.

Static analysis (`static_verdict`) comes before the sandbox: a program that does not compile is "syntax_error";
one in which pyflakes finds a name used but never defined ("undefined_name"), looking at the program followed by
its tests (the tests call its functions), is not run at all. Only pyflakes' `UndefinedName` counts: a
`from x import *` makes pyflakes report `ImportStarUsage` instead (names may come from the star), so such
programs are not flagged; builtins and module magic names (`__file__`, `__name__`) are defined. The check covers
function bodies too, including functions the tests never call: the paper's rule is "passes static analysis *and*
every test", as a linter would judge it. Other pyflakes findings (unused imports, redefinitions) are style, not
errors, and are ignored.
"""

from __future__ import annotations

import ast
import logging
import re
import textwrap
from collections.abc import Sequence

log = logging.getLogger(__name__)

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})  # the fence tags that mark a block as Python

# ---------------------------------------------------------------------------------------------------------------
# Extraction

_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.TryStar)
_CHECK_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)  # what a self-check may be
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# A top-level `def` or `class` line, for blocks that do not parse (the names they would define).
_DEF_LINE = re.compile(r"^(?:async[ \t]+)?def[ \t]+(\w+)|^class[ \t]+(\w+)", re.MULTILINE)
# A plain-name call that runs the model's own tests (`test_add_one()`, `run_tests()`, `check(f)`), and runners.
_TEST_NAME = re.compile(r"(?:^|_)(?:tests?|check)(?:_|$)", re.IGNORECASE)
_TEST_RUNNERS = frozenset({("unittest", "main"), ("pytest", "main"), ("doctest", "testmod")})
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")  # the lines as Python's tokenizer counts them


def _defines_function(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree))


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either way round): never runs, as the sandbox runs the program as a module."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1):
        return False
    sides = [node.test.left, *node.test.comparators]
    return (
        isinstance(node.test.ops[0], ast.Eq)
        and any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
        and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    )


def _outer(statements: Sequence[ast.stmt]) -> list[ast.stmt]:
    """The statements that run at module level: the top level and the bodies of its compound statements
    (`if`, `try`, `for`, `with`, ...), not function or class bodies and not the `__main__` guard."""
    found: list[ast.stmt] = []
    for node in statements:
        if _is_main_guard(node):
            continue
        found.append(node)
        if isinstance(node, _COMPOUND):
            inner = [*getattr(node, "body", []), *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            inner += [s for handler in getattr(node, "handlers", []) for s in handler.body]
            found += _outer(inner)
    return found


def _bound_names(tree: ast.Module) -> set[str]:
    """The names a block binds at module level: functions, classes, imports, assignment targets."""
    names: set[str] = set()
    for node in _outer(tree.body):
        if isinstance(node, _DEFINITIONS):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        else:
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
                targets = [node.target]
            elif isinstance(node, ast.With | ast.AsyncWith):
                targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _runs_tests(node: ast.stmt) -> bool:
    """A top-level call that runs the model's own tests: `test_add_one()`, `run_tests()`, `check(add_one)`
    (a plain name with a `test`, `tests` or `check` word), `unittest.main()`, `pytest.main()`, `doctest.testmod()`."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    func = node.value.func
    if isinstance(func, ast.Name):
        return bool(_TEST_NAME.search(func.id))
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and (func.value.id, func.attr) in _TEST_RUNNERS
    )


def _is_check(node: ast.stmt) -> bool:
    """A top-level self-check of the model's: an `assert`, a call that runs its own tests (`_runs_tests`), or a
    loop / `if` / `with` holding only asserts and expression statements (`for x, y in cases: assert f(x) == y`).
    One that also assigns is kept (it may set up what the solution reads)."""

    def only_checks(statements: Sequence[ast.stmt]) -> bool:
        return all(
            isinstance(s, ast.Assert | ast.Expr | ast.Pass)
            or (isinstance(s, _CHECK_COMPOUND) and not _is_main_guard(s) and only_checks(_children(s)))
            for s in statements
        )

    if isinstance(node, ast.Assert) or _runs_tests(node):
        return True
    if not isinstance(node, _CHECK_COMPOUND) or _is_main_guard(node):
        return False
    return only_checks(_children(node)) and any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _children(node: ast.stmt) -> list[ast.stmt]:
    return [*getattr(node, "body", []), *getattr(node, "orelse", [])]


def _is_future(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module == "__future__"


def _without(source: str, tree: ast.Module, drop: Sequence[ast.stmt]) -> str:
    """`source` without the lines of the top-level statements `drop` (one that shares a line with another
    statement, `x = 1; assert x`, stays)."""
    lines = _LINE.findall(source)
    body = tree.body
    removed: set[int] = set()
    for i, node in enumerate(body):
        if not any(node is d for d in drop) or node.end_lineno is None:
            continue
        if (i > 0 and (body[i - 1].end_lineno or 0) >= node.lineno) or (
            i + 1 < len(body) and body[i + 1].lineno <= node.end_lineno
        ):
            continue
        removed.update(range(node.lineno, node.end_lineno + 1))
    return "".join(line for number, line in enumerate(lines, 1) if number not in removed)


def _program(bodies: Sequence[str]) -> str | None:
    """The program made of Python blocks (see `extract_code`), or None when none of them defines anything."""
    parts: list[tuple[str, ast.Module | None, set[str]]] = []
    for body in bodies:
        try:
            tree: ast.Module | None = ast.parse(body)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            if not any(isinstance(node, _DEFINITIONS) for node in _outer(tree.body)):
                continue  # a usage block: calls, prints, asserts, a `__main__` demo
            parts.append((body, tree, _bound_names(tree)))
        else:
            names = {a or b for a, b in _DEF_LINE.findall(body)}
            if names:  # a broken solution block: it stays, and the program is a syntax error
                parts.append((body, None, names))
    if not parts:
        return None
    kept: list[tuple[str, ast.Module | None]] = []
    later: set[str] = set()
    for body, tree, names in reversed(parts):
        if names <= later:
            continue  # an earlier draft: every name it binds is bound again by a later block
        later |= names
        kept.append((body, tree))
    kept.reverse()
    futures: list[str] = []
    texts: list[str] = []
    for body, tree in kept:
        if tree is None:
            texts.append(body)
            continue
        future = [node for node in tree.body if _is_future(node)]
        futures += [ast.get_source_segment(body, node) or "" for node in future]
        texts.append(_without(body, tree, [*future, *(node for node in tree.body if _is_check(node))]))
    texts = [t if t.endswith("\n") else t + "\n" for t in texts]
    head = [line + "\n" for line in dict.fromkeys(f for f in futures if f)]
    return "".join(head) + "\n".join(texts)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a markdown text as (lower-case language tag, dedented body), in order."""
    return [(tag.lower(), textwrap.dedent(body)) for tag, body in _FENCE.findall(text)]


def extract_code(text: str) -> str | None:
    """The program in a response, read statically (nothing runs); None when there is none.

    The Python blocks are the ```python (py, python3, py3) blocks, else, when none of them defines anything, the
    untagged ``` blocks (the two kinds are not mixed); blocks in other languages (```js, ```bash, ```text, output) are never Python. The program is, in
    order, the Python blocks that define a function or class at module level, joined as one file:

    - a block that defines nothing (usage examples, prints, calls, its own asserts, a `__main__` demo, an output
      transcript) is left out: it never masks the solution, and its demo code never runs;
    - when two blocks define the same name, the later definition wins, as in Python; a block every name of which
      (functions, classes, imports, assignments) a later block binds again is an earlier draft and left out;
    - the model's own top-level checks are removed: `assert` statements, loops / `if`s holding only asserts
      and expression statements, and calls that run its own tests (`test_add_one()`, `check(add_one)`,
      `unittest.main()`). The verdict comes from the prompt's tests alone, wherever the model put its
      checks (in the solution's block, in a block of their own, under the `__main__` guard): a wrong self-check
      does not fail a correct solution, and a right one does not pass a wrong one. (EvalPlus' sanitizer also
      keeps only the definitions.) Everything else in a defining block runs as written, top-level calls
      included: they may be set-up the solution needs (`sys.setrecursionlimit`, a precomputed table);
    - `if __name__ == "__main__":` stays but never runs: the sandbox runs the program as module `solution`;
    - `from __future__` imports move to the top (they must come first);
    - a block that does not parse but has a top-level `def` / `class` line is a broken solution: it is kept
      (the program is then a "syntax_error"); one without (a `>>>` transcript) is left out.

    When no Python block defines anything, the last Python block is the program, as written. Without fenced
    blocks, the whole text when it is Python that defines a function (its own checks removed the same way)."""
    if not isinstance(text, str):
        return None
    blocks = code_blocks(text)
    tiers = [[body for tag, body in blocks if tag in wanted and body.strip()] for wanted in (PYTHON_TAGS, {""})]
    for bodies in tiers:
        program = _program(bodies)
        if program is not None:
            return program
    for bodies in tiers:
        if bodies:
            return bodies[-1]
    if blocks:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _program([text]) or text if _defines_function(tree) else None


# ---------------------------------------------------------------------------------------------------------------
# Static analysis


def undefined_names(code: str, tests: Sequence[str] = ()) -> list[str]:
    """Names pyflakes reports undefined in `code` followed by `tests` (sorted, distinct); [] when none.

    Both must parse (see `static_verdict`). Only `UndefinedName` counts (see the module docstring)."""
    from pyflakes import checker, messages

    try:
        tree = ast.parse("\n".join([code, *tests]))
    except (SyntaxError, ValueError):
        # Each parses alone but not together (an unclosed construct at the end of the program): check the program.
        tree = ast.parse(code)
    try:
        found = checker.Checker(tree, filename="solution.py").messages
    except Exception as e:  # pyflakes is not the judge of last resort: let the run decide
        log.debug("pyflakes failed: %s", e)
        return []
    return sorted({m.message_args[0] for m in found if isinstance(m, messages.UndefinedName)})


def _compiles(source: str) -> bool:
    # A full compile, not only a parse: `return` or `break` outside their blocks are errors of the compiler.
    try:
        compile(source, "<check>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes in the source
        return False
    return True


def static_verdict(code: str | None, tests: list[str]) -> str | None:
    """The verdict that settles `code` without running it ("no_code", "syntax_error", "bad_tests",
    "undefined_name"), or None when it must run."""
    if not isinstance(code, str) or not code.strip():
        return "no_code"
    if not _compiles(code):
        return "syntax_error"
    if not tests or not all(isinstance(t, str) and _compiles(t) for t in tests):
        return "bad_tests"
    if undefined_names(code, tests):
        return "undefined_name"
    return None
