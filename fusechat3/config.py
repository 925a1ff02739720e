"""The configuration system: pydantic models for every settings section, YAML loading with
`--set` overrides, and the one formatter that turns pydantic's validation errors into the
one-line messages users get.

Every section (the recipe's and the training configs') is a `Section`: a pydantic v2 model
that forbids unknown keys and converts nothing silently (`strict`: `n: "5"` or `n: true` is
an error, not 5 or 1; an integer is accepted where a number is expected). A mistake becomes
one `RecipeError` line that names the file and the dotted key, says what was expected and
suggests the closest valid key:

    imf.yaml: unknown key 'sources[0].sampling.temprature' (did you mean 'temperature'?)
    imf.yaml: key 'sources[0].sampling.n' must be an integer, got 'five'

A check that spans several keys is a validator raising `KeyProblem(key, message)`; `key` is
relative to the model the validator belongs to, so the message names the exact key.

Only pydantic and pyyaml are imported: the CLI loads recipes before any heavy library.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_serializer

from fusechat3.errors import RecipeError


class Section(BaseModel):
    """A settings section: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # Keys added after runs were made with this section: at their default they stay out of its dump, so the stage
    # keys made from the dump (`fusechat3.run`) do not change and no existing run does a stage again.
    added_later: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unset_later_keys(self, handler: Any) -> Any:
        out = handler(self)
        for name in self.added_later:
            if name in out and getattr(self, name) == type(self).model_fields[name].default:
                del out[name]
        return out


# A run's name becomes a folder (runs/<name>), a source's name a sub-folder: plain names only.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def simple_name(what: str) -> AfterValidator:
    """A name that becomes a folder of the run directory: letters, digits, '_', '.', '-'."""

    def check(value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"must be a simple {what} (letters, digits, '_', '.', '-'), got {value!r}")
        return value

    return AfterValidator(check)


def in_range(lo: float, hi: float, *, open_low: bool = False) -> AfterValidator:
    """A number field's check that it lies in [lo, hi] ((lo, hi] with `open_low`), for `Annotated[float, ...]`;
    the message states the interval: `must be in (0, 1], got 0.0`."""
    interval = f"{'(' if open_low else '['}{lo:g}, {hi:g}]"

    def check(value: float) -> float:
        if not (lo < value if open_low else lo <= value) or value > hi:
            raise ValueError(f"must be in {interval}, got {value}")
        return value

    return AfterValidator(check)


class KeyProblem(ValueError):
    """Raised by a validator: `message` is about `key` (dotted, relative to the validated model; '' for itself)."""

    def __init__(self, key: str | int | Sequence[str | int], message: str) -> None:
        super().__init__(message)
        if isinstance(key, str):
            self.loc: tuple[str | int, ...] = tuple(p for p in key.split(".") if p)
        elif isinstance(key, int):
            self.loc = (key,)
        else:
            self.loc = tuple(key)
        self.message = message


# --------------------------------------------------------------------------- messages


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, else ` (choose from: a, b)`; '' with no choices."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (choose from: {', '.join(choices)})" if choices else ""


def dotted(loc: Sequence[str | int]) -> str:
    """A key path as messages show it: `sources[0].sampling.n`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list" if len(repr(value)) > 40 else repr(list(value))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (tp, False)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(tp)):
            return args[0], True
    return tp, False


def _unwrap(tp: Any) -> Any:
    """The type under `Annotated[...]`."""
    while hasattr(tp, "__metadata__"):
        tp = get_args(tp)[0]
    return tp


def describe(tp: Any) -> str:
    """A type as an error message says it: `an integer`, `a list of strings`, `a mapping or null`."""
    tp = _unwrap(tp)
    inner, nullable = _optional(tp)
    if nullable:
        return describe(inner) + " or null"
    origin, args = get_origin(tp), get_args(tp)
    if origin is list or tp is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or tp is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, "a valid value")


def _plural(tp: Any) -> str:
    tp = _unwrap(tp)
    return {str: "strings", int: "integers", float: "numbers", bool: "booleans"}.get(tp, describe(tp))


def _child(tp: Any, part: str | int) -> Any:
    """The type found one step down a key path from type `tp` (None if unknown)."""
    tp, _ = _optional(_unwrap(tp))
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(tp), get_args(tp)
    if origin is list and args:
        return args[0]
    if origin is dict and args:
        return args[1]
    return None


def type_at(model: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The declared type at key path `loc` of `model` (None where the path leaves the declared fields)."""
    tp: Any = model
    for part in loc:
        if tp is None:
            return None
        tp = _child(tp, part)
    return tp


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    tp = type_at(model, loc)
    tp = _unwrap(_optional(_unwrap(tp))[0]) if tp is not None else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def error_line(error: dict, model: type[BaseModel], prefix: Sequence[str | int] = ()) -> str:
    """One pydantic error (an item of `ValidationError.errors()`) as the one line a user reads."""
    loc = [p for p in error["loc"]]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), KeyProblem):
        problem: KeyProblem = ctx["error"]
        return f"key '{dotted([*prefix, *loc, *problem.loc])}' {problem.message}"
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type (YAML `1: x` is an integer key)
        return f"key '{dotted([*prefix, *loc[:-1]])}' must have string keys, got {show(error.get('input'))} (quote it)"
    key = dotted([*prefix, *loc])
    if kind == "extra_forbidden":
        return f"unknown key '{key}'{did_you_mean(str(loc[-1]), _fields_at(model, loc[:-1]))}"
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind == "literal_error":
        choices = list(get_args(_optional(_unwrap(type_at(model, loc)))[0]))
        return f"key '{key}' must be one of {choices}, got {show(error.get('input'))}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"key '{key}' must be {_BOUNDS[kind]} {bound}, got {show(error.get('input'))}"
    if kind == "value_error":
        return f"key '{key}' {ctx.get('error', error['msg'])}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"key '{key}' must be {describe(type_at(model, loc))}, got {show(error.get('input'))}"
    return f"key '{key}' {error['msg'][0].lower()}{error['msg'][1:]}, got {show(error.get('input'))}"


def first_error(err: ValidationError, model: type[BaseModel], prefix: Sequence[str | int] = ()) -> str:
    """The message of the error a user should fix first: an unknown key before anything else (a misspelt
    key also makes its correct spelling 'missing'), then the first in document order."""
    errors = err.errors()
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    return error_line(errors[0], model, prefix)


def validate(model: type[BaseModel], raw: Any, where: str = "", source: str = "") -> Any:
    """`model` validated from the parsed YAML `raw`; a RecipeError line naming `source` (the file) and the key.

    `where`: the dotted key of `raw` inside its file (e.g. `sources[0].sampling`), for messages.
    """
    prefix = [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", where) if p] if where else []
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        line = first_error(e, model, prefix)
        raise RecipeError(f"{source}: {line}" if source else line) from None


# --------------------------------------------------------------------------- YAML and overrides


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 floats and duplicate keys rejected."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # PyYAML keeps the last of two equal keys silently; in a recipe that is a typo.
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# PyYAML follows YAML 1.1, where `5e-6` (no dot) is a string: learning rates would silently
# reach TRL as strings. Resolve YAML 1.2 floats too.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML text to Python objects; a RecipeError with the line number if it is broken."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(e.problem or e.context or "").split())
        raise RecipeError(f"not valid YAML{line}: {problem}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"not valid YAML: {' '.join(str(e).split())}") from None


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of the raw mapping with `key.path=value` overrides applied.

    Values are parsed as YAML (`8` is an integer, `[0.0, 1.0]` a list, `null` None); list
    items are addressed by index (`sources.0.sampling.n=8` or `sources[0].sampling.n=8`);
    missing mappings on the way are created. The result is validated by the caller.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        _apply_one(out, item)
    return out


def _apply_one(raw: dict, item: str) -> None:
    where = f"--set {item!r}"
    path, sep, text = item.partition("=")
    path = re.sub(r"\[(\d+)\]", r".\1", path.strip())
    parts = path.split(".")
    if not sep or not all(parts):
        raise RecipeError(f"{where}: an override must look like key.path=value (e.g. sources.0.sampling.n=8)")
    try:
        value = parse_yaml(text)
    except RecipeError as e:
        raise RecipeError(f"{where}: the value is {e}") from None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{where}: '{here}' must be a list index 0..{len(node) - 1}")
            part = int(part)
        elif isinstance(node, dict):
            if not last and node.get(part) is None:
                node[part] = {}  # e.g. `sampler.engine.dtype=float32` in a recipe without `sampler:`
        else:
            parent = ".".join(parts[:depth])
            raise RecipeError(f"{where}: '{parent}' is {show(node)}, not a mapping or list, so it has no '{part}'")
        if last:
            node[part] = value
        else:
            node = node[part]


def read_yaml(path: str | Path, overrides: Sequence[str] = (), what: str = "recipe") -> Any:
    """The parsed YAML file at `path` with `overrides` applied; errors are one RecipeError line naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{source}: cannot read the {what} ({e})") from None
    try:
        raw = parse_yaml(text)
        if isinstance(raw, dict):
            raw = apply_overrides(raw, overrides)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    return raw


def model_ref(value: str) -> str:
    """A field validator: a model reference (local path, Hub id or `toyworld:<asset>`) must not be empty."""
    if not value:
        raise ValueError("must be a local path, a Hub id or 'toyworld:<asset>', got ''")
    return value
