"""Prompt builders: one module per prompt source, looked up by its name.

A builder module defines `build(**args) -> list[dict]` returning Prompt rows
(`fusechat3.schema.make_prompt`): load -> normalise -> filter. A recipe names it in
`prompts: [{builder: <module name>, args: {...}}]`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable


def available() -> list[str]:
    """Names of every builder module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_builder(name: str) -> Callable[..., list[dict]]:
    """The `build` function of builder `name`; one clear error line if there is none."""
    names = available()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown prompt builder {name!r}{hint}; available: {names}")
    return importlib.import_module(f"{__name__}.{name}").build


def run_builder(name: str, args: dict, where: str = "prompts") -> list[dict]:
    """Call builder `name` with `args`, turning a wrong argument into one clear error line."""
    fn = get_builder(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(args) - set(params))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; it takes {sorted(params)}"
            raise ValueError(f"{where}: builder {name!r} has no argument {key!r}{hint}")
    return fn(**args)


def collect(specs: list, where: str) -> tuple[list[dict], int]:
    """Prompt rows of several builder specs (`.builder`, `.args`), first occurrence of each
    prompt_id kept; returns (rows, number of duplicates skipped)."""
    rows: list[dict] = []
    seen: set[str] = set()
    dup = 0
    for i, spec in enumerate(specs):
        for row in run_builder(spec.builder, spec.args, where=f"{where}[{i}]"):
            if row["prompt_id"] in seen:
                dup += 1
                continue
            seen.add(row["prompt_id"])
            rows.append(row)
    return rows, dup
