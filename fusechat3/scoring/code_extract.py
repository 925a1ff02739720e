"""Reading a model's answer as a program, before anything runs: pull the code out of the response, then check
it statically.

Extraction (`extract_code`): the last ```python block, else the last untagged one, else the whole text when it is
Python that defines a function; blocks in other languages are not Python.

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


def _defines_function(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree))


def _defines_something(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) for node in ast.walk(tree))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a markdown text as (lower-case language tag, dedented body), in order."""
    return [(tag.lower(), textwrap.dedent(body)) for tag, body in _FENCE.findall(text)]


def extract_code(text: str) -> str | None:
    """The program in a response: the last ```python block, else the last untagged ``` block, else the whole
    text if it is Python that defines a function; None when there is none (blocks in other languages are
    not Python). Among blocks of one kind, the last that defines a function or class wins over later ones that
    do not: a response often ends with a block of usage examples or its own asserts, which is not the program."""
    if not isinstance(text, str):
        return None
    blocks = code_blocks(text)
    for wanted in (PYTHON_TAGS, {""}):
        tagged = [body for tag, body in blocks if tag in wanted and body.strip()]
        if tagged:
            defining = [body for body in tagged if _defines_something(body)]
            return (defining or tagged)[-1]
    if blocks:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return text if _defines_function(tree) else None


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
