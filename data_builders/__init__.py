"""Prompt builders: one module per prompt source, looked up by its name.

A builder module defines `build(**args)` returning Prompt rows (`fusechat3.schema.make_prompt`):
load -> normalise -> filter. A recipe names it in `prompts: [{builder: <module name>, args: {...}}]`.

A builder never drops a row silently: it returns either a plain `list[dict]` (nothing skipped) or
`Built(rows, skipped)`, with the rows it could not turn into prompts counted by reason
(`{"no_tests": 3, "empty_prompt": 1}`). `collect` runs the specs of a recipe and gives one `Built`
per spec; the prompts stage then applies the shared steps of `data_builders._steps` (dedup, math/code
removal, decontamination, per-spec limit and fraction) and reports every count per spec and domain.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from fusechat3.errors import RecipeError, UserError

DUPLICATE = "duplicate_prompt"  # the skip reason of a prompt seen before (same prompt_id, or same normalised text)


@dataclass
class Built:
    """What a builder made: its Prompt rows, and how many source rows it skipped, by reason."""

    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def available() -> list[str]:
    """Names of every builder module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_builder(name: str, where: str = "prompts") -> Callable[..., list[dict] | Built]:
    """The `build` function of builder `name`; a RecipeError line naming `where` if there is none."""
    names = available()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{where}: unknown prompt builder {name!r}{hint}; available: {names}")
    return importlib.import_module(f"{__name__}.{name}").build


def run_builder(name: str, args: dict, where: str = "prompts") -> list[dict] | Built:
    """Call builder `name` with `args`, turning a wrong argument into one clear error line.

    A user error the builder raises (a bad argument value, a missing file or column, a malformed row)
    is raised again, of the same type, with `where` (the recipe file and spec) in front."""
    fn = get_builder(name, where)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(args) - set(params))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; it takes {sorted(params)}"
            raise RecipeError(f"{where}: builder {name!r} has no argument {key!r}{hint}")
    try:
        return fn(**args)
    except UserError as e:
        raise type(e)(f"{where}: {e}") from e


def as_built(out: list[dict] | Built, where: str = "prompts") -> Built:
    """A builder's result as a `Built` (a plain list of rows skipped nothing)."""
    if isinstance(out, Built):
        return out
    if isinstance(out, list):
        return Built(out)
    raise TypeError(f"{where}: a builder returned {type(out).__name__}, not a list of rows or a Built")


def collect(specs: list, where: str) -> list[Built]:
    """One `Built` per builder spec (`.builder`, `.args`), in order. A prompt_id given before (by this
    spec or an earlier one) is dropped and counted as `duplicate_prompt` in the spec that repeats it, so
    the rows of all specs together have unique prompt_ids."""
    out: list[Built] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        built = as_built(run_builder(spec.builder, spec.args, where=f"{where}[{i}]"), f"{where}[{i}]")
        rows = []
        for row in built.rows:
            if row["prompt_id"] in seen:
                built.skip(DUPLICATE)
                continue
            seen.add(row["prompt_id"])
            rows.append(row)
        out.append(Built(rows, dict(built.skipped)))
    return out
