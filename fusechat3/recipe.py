"""The recipe: one YAML file per run, loaded into typed dataclasses and validated on load.

A generic loader walks the dataclass type hints, so adding a recipe field is adding one
line to a dataclass below. Every mistake a user can make in a recipe (a misspelled key, a
value of the wrong type, a missing key, broken YAML, a bad `--set` override) is raised as
one `RecipeError` line that names the file and the dotted key and says how to fix it.

Only pyyaml is imported: the CLI loads recipes before any heavy library.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from fusechat3.schema import stable_hash

# Where `toyworld:<name>` model references point: the assets shipped inside the package.
TOYWORLD_ASSETS = Path(__file__).resolve().parent / "toyworld" / "assets"
TOYWORLD_PREFIX = "toyworld:"

# A run's name becomes a folder (runs/<name>), so it must be a plain folder name.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RecipeError(ValueError):
    """A recipe mistake, as one line naming the file, the key and the fix."""


def _key(where: str, name: str | int) -> str:
    """The dotted path of a child key, as error messages show it: `sources[0].sampling.n`."""
    if isinstance(name, int):
        return f"{where}[{name}]"
    return f"{where}.{name}" if where else str(name)


def _fail(where: str, message: str) -> RecipeError:
    return RecipeError(f"key '{where}' {message}")


# --------------------------------------------------------------------------- schema


@dataclass
class BuilderSpec:
    """A data builder from data_builders/, by registry name."""

    builder: str  # registry name of the builder module in data_builders/
    args: dict = field(default_factory=dict)  # free-form keyword arguments passed to the builder
    # Keep this spec's math and code prompts in the instruction and zh domains (prompts stage; by
    # default they are removed, as in FuseChat-3.0).
    keep_math_code: bool = False
    # After the shared filters, keep this fraction of the spec's rows, then at most `limit` of them,
    # chosen by a hash of prompt_id and the recipe seed (deterministic); null limit: no cap.
    limit: int | None = None
    fraction: float = 1.0

    def _validate(self, where: str) -> None:
        if not self.builder:
            raise _fail(_key(where, "builder"), "must name a data builder, got ''")
        if self.limit is not None:
            _check_min(where, "limit", self.limit, 1)
        if not 0.0 < self.fraction <= 1.0:
            raise _fail(_key(where, "fraction"), f"must be in (0, 1], got {self.fraction}")


@dataclass
class DecontaminationSpec:
    """Benchmark prompts that no training prompt may share a word n-gram with (prompts stage)."""

    prompts: list[BuilderSpec]  # builders of the benchmark prompts (at least one)
    ngram: int = 13  # n-gram length in words; shorter prompts are matched only whole

    def _validate(self, where: str) -> None:
        if not self.prompts:
            raise _fail(_key(where, "prompts"), "must list at least one prompt builder")
        _check_min(where, "ngram", self.ngram, 1)


@dataclass
class SamplingSpec:
    """How one model is sampled (vLLM SamplingParams fields)."""

    n: int = 5  # responses per prompt
    n_per_domain: dict[str, int] = field(default_factory=dict)  # override n by domain (paper: 8 for code, 1 for zh)
    temperature: float = 0.8  # softmax temperature; 0 is greedy
    top_p: float = 0.95  # nucleus sampling mass
    top_k: int = -1  # keep the k most likely tokens; -1 (or 0) turns it off
    repetition_penalty: float = 1.0  # > 1 discourages repeats (the paper uses 1.05 for Qwen)
    max_tokens: int = 2048  # longest response, in tokens
    seed: int = 0  # base seed: each prompt is sampled with a seed derived from it and its prompt_id
    stop: list[str] = field(default_factory=list)  # extra stop strings besides the chat template's end token

    def n_for(self, domain: str) -> int:
        """How many responses to sample for a prompt of `domain`."""
        return self.n_per_domain.get(domain, self.n)

    def _validate(self, where: str) -> None:
        _check_min(where, "n", self.n, 1)
        for domain, n in self.n_per_domain.items():
            _check_min(_key(where, "n_per_domain"), domain, n, 1)
        _check_min(where, "temperature", self.temperature, 0.0)
        if not 0.0 < self.top_p <= 1.0:
            raise _fail(_key(where, "top_p"), f"must be in (0, 1], got {self.top_p}")
        _check_min(where, "top_k", self.top_k, -1)
        if self.repetition_penalty <= 0:
            raise _fail(_key(where, "repetition_penalty"), f"must be > 0, got {self.repetition_penalty}")
        _check_min(where, "max_tokens", self.max_tokens, 1)


ROLES = ("source", "target")


@dataclass
class SourceSpec:
    """A source LLM whose responses are fused into the target."""

    name: str  # short unique name; it is the `model` column of Sample and Score rows
    model: str  # local path, Hub id, or "toyworld:<asset>" (openai backend: the served model name)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)  # how this source is sampled
    domains: list[str] | None = None  # domains this source is sampled on (null: all)
    backend: str | None = None  # this source's sampling backend (null: sampler.backend)
    # This source's backend options, over sampler.engine: vLLM's tensor_parallel_size,
    # max_model_len, dtype, gpu_memory_utilization, enable_prefix_caching, revision,
    # trust_remote_code...; openai's base_url, api_key_env, max_concurrency...
    engine: dict = field(default_factory=dict)
    # A Jinja chat template file (relative to the recipe's folder) used instead of the
    # model's own; null: the tokenizer's template.
    chat_template: str | None = None
    # "source": a model whose responses are fused (SFT and DPO rows). "target": the target model's own
    # samples, scored like a source's and used only for WRPO's chosen/rejected (at most one such entry).
    role: str = "source"

    def _validate(self, where: str) -> None:
        if self.role not in ROLES:
            raise _fail(_key(where, "role"), f"must be one of {list(ROLES)}, got {self.role!r}")
        if not _NAME_RE.match(self.name):
            allowed = "letters, digits, '_', '.', '-'"
            raise _fail(_key(where, "name"), f"must be a simple name ({allowed}), got {self.name!r}")
        if not self.model:
            raise _fail(_key(where, "model"), "must be a local path, a Hub id or 'toyworld:<asset>', got ''")
        if self.domains is not None and not self.domains:
            raise _fail(_key(where, "domains"), "must list at least one domain (or be left out to mean all)")
        if self.backend == "":
            raise _fail(_key(where, "backend"), "must name a sampling backend (vllm, hf or openai) or be null")


@dataclass
class SamplerSpec:
    """The sampling backend shared by every source."""

    backend: str = "vllm"  # vllm | hf | openai (a name in fusechat3.sampling's registry)
    # Free-form keyword arguments of the backend (dtype, max_model_len, tensor_parallel_size, ...).
    engine: dict = field(default_factory=dict)
    shard_size: int = 512  # prompts per shard: the unit of resume

    def _validate(self, where: str) -> None:
        if not self.backend:
            raise _fail(_key(where, "backend"), "must name a sampling backend (vllm, hf or openai), got ''")
        _check_min(where, "shard_size", self.shard_size, 1)


@dataclass
class RewardSpec:
    """The reward model that scores every response."""

    model: str  # a ...ForSequenceClassification model: local path, Hub id or "toyworld:<asset>"
    batch_size: int = 16  # most responses per forward pass
    max_tokens_per_batch: int | None = 16384  # most padded tokens (rows x longest) per forward pass; null: no budget
    max_length: int = 4096  # longer prompt+response pairs are not truncated: reward null, "too_long"
    dtype: str | None = None  # torch dtype name (bfloat16, float32, ...); null: the model's own
    trust_remote_code: bool = False  # needed by reward models with custom code (e.g. ArmoRM)
    backend: str = "transformers"  # or "vllm": vLLM's pooling runner, for architectures vLLM supports
    revision: str | None = None  # a Hub revision (branch, tag or commit) of the reward model

    def _validate(self, where: str) -> None:
        if not self.model:
            raise _fail(_key(where, "model"), "must be a local path, a Hub id or 'toyworld:<asset>', got ''")
        _check_min(where, "batch_size", self.batch_size, 1)
        _check_min(where, "max_length", self.max_length, 1)
        if self.max_tokens_per_batch is not None:
            _check_min(where, "max_tokens_per_batch", self.max_tokens_per_batch, 1)
        if self.backend not in ("transformers", "vllm"):
            raise _fail(_key(where, "backend"), f"must be 'transformers' or 'vllm', got {self.backend!r}")


@dataclass
class CodeSpec:
    """The sandbox that runs code responses against their tests."""

    timeout_s: float = 10.0  # wall-clock limit per response, seconds
    memory_mb: int = 1024  # address-space limit per response, MiB
    workers: int = 0  # parallel sandboxes; 0: one per CPU core

    def _validate(self, where: str) -> None:
        if self.timeout_s <= 0:
            raise _fail(_key(where, "timeout_s"), f"must be > 0, got {self.timeout_s}")
        _check_min(where, "memory_mb", self.memory_mb, 1)
        _check_min(where, "workers", self.workers, 0)


@dataclass
class ScoringSpec:
    """How responses are scored: reward model plus correctness checks."""

    reward_model: RewardSpec  # required: scores every response
    code: CodeSpec = field(default_factory=CodeSpec)  # sandbox settings for code prompts
    shard_size: int = 2048  # samples per shard: the unit of resume

    def _validate(self, where: str) -> None:
        _check_min(where, "shard_size", self.shard_size, 1)


@dataclass
class BuildingSpec:
    """The FuseChat-3.0 selection rules that turn scored samples into SFT and DPO sets."""

    # Fraction of each domain's prompts that go to SFT; the rest go to DPO (paper: 4:6).
    sft_fraction: dict[str, float] = field(default_factory=lambda: {"instruction": 0.4, "math": 0.4, "code": 0.4})
    reward_gap: list[float] = field(default_factory=lambda: [0.01, 0.1])  # [lo, hi]: keep a DPO pair if lo <= gap <= hi
    reward_gap_per_domain: dict[str, list[float] | None] = field(default_factory=dict)  # per-domain band; null: no band
    sft_only_domains: list[str] = field(default_factory=lambda: ["zh"])  # domains that give SFT rows only
    zh_source: str | None = None  # the one source whose responses make the zh SFT rows (must name a source)
    seed: int = 0  # seed of the SFT/DPO prompt split
    # Fraction of the prompts whose rows are held out of training, in build/<set>-heldout.parquet: the
    # held-out data of the training recipes' evaluation and checkpoint choice. 0: none.
    heldout_fraction: float = 0.0

    def gap_for(self, domain: str) -> list[float] | None:
        """The reward-gap band of a domain's DPO pairs (None: no band)."""
        return self.reward_gap_per_domain.get(domain, self.reward_gap)

    def _validate(self, where: str) -> None:
        for domain, fraction in self.sft_fraction.items():
            if not 0.0 <= fraction <= 1.0:
                raise _fail(_key(_key(where, "sft_fraction"), domain), f"must be in [0, 1], got {fraction}")
        if not 0.0 <= self.heldout_fraction <= 0.5:
            raise _fail(_key(where, "heldout_fraction"), f"must be in [0, 0.5], got {self.heldout_fraction}")
        _check_band(_key(where, "reward_gap"), self.reward_gap)
        for domain, band in self.reward_gap_per_domain.items():
            if band is not None:
                _check_band(_key(_key(where, "reward_gap_per_domain"), domain), band)


@dataclass
class ModelSpec:
    """The target model that is trained."""

    model: str  # local path, Hub id or "toyworld:<asset>"

    def _validate(self, where: str) -> None:
        if not self.model:
            raise _fail(_key(where, "model"), "must be a local path, a Hub id or 'toyworld:<asset>', got ''")


@dataclass
class ControlsSpec:
    """Control runs: the same target trained on one source's responses only, per source."""

    enabled: bool = False  # train the controls too
    sources: list[str] | None = None  # sources to make a control of (null: every source); must name sources
    # Controls trained at once, each in its own process with an equal share of the CPU threads (1: one after
    # another, in this process). On a CPU with small models, 2-3 at once use the cores better than one.
    parallel: int = 1

    def _validate(self, where: str) -> None:
        _check_min(where, "parallel", self.parallel, 1)


@dataclass
class EvalSpec:
    """Held-out evaluation of the trained models."""

    prompts: list[BuilderSpec]  # evaluation prompt builders (at least one)
    # How models are sampled for evaluation: greedy, one response, by default.
    sampling: SamplingSpec = field(
        default_factory=lambda: SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=512)
    )

    def _validate(self, where: str) -> None:
        if not self.prompts:
            raise _fail(_key(where, "prompts"), "must list at least one prompt builder")


@dataclass
class Recipe:
    """One run: prompts, sources, scoring, building, target training, evaluation."""

    name: str  # run name; the run directory defaults to runs/<name>
    prompts: list[BuilderSpec]  # prompt builders whose rows are concatenated (at least one)
    sources: list[SourceSpec]  # source LLMs (at least one; names unique)
    scoring: ScoringSpec  # reward model and correctness checks
    target: ModelSpec  # the model that is trained
    run_dir: str | None = None  # default: runs/<name>, relative to the current directory
    seed: int = 0  # global seed (prompt order, training)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)  # sampling backend
    building: BuildingSpec = field(default_factory=BuildingSpec)  # SFT/DPO selection rules
    sft: dict = field(default_factory=dict)  # TRL SFTConfig fields, validated by fusechat3.training
    dpo: dict = field(default_factory=dict)  # TRL DPOConfig fields, validated by fusechat3.training
    controls: ControlsSpec = field(default_factory=ControlsSpec)  # single-source control runs
    eval: EvalSpec | None = None  # held-out evaluation (null: none)
    # Drop training prompts that share a word n-gram with these benchmark prompts (null: off).
    decontamination: DecontaminationSpec | None = None
    # Set by the loader: the YAML file this recipe came from. Not a YAML key, not hashed.
    path: str = field(default="", metadata={"yaml": False})

    @property
    def run_path(self) -> Path:
        """The run directory: `run_dir`, or runs/<name> under the current directory."""
        return Path(self.run_dir).expanduser() if self.run_dir else Path("runs") / self.name

    def sampler_for(self, src: SourceSpec) -> tuple[str, dict]:
        """The backend name and engine options one source is sampled with."""
        return src.backend or self.sampler.backend, {**self.sampler.engine, **src.engine}

    def chat_template(self, src: SourceSpec) -> str | None:
        """The text of a source's `chat_template` file (relative to the recipe's folder), or None."""
        if src.chat_template is None:
            return None
        path = Path(src.chat_template).expanduser()
        if not path.is_absolute() and self.path:
            path = Path(self.path).parent / path
        try:
            return path.read_text(encoding="utf-8")
        except OSError as e:
            where = f"{self.path or 'recipe'}: key 'sources[{self.sources.index(src)}].chat_template'"
            raise RecipeError(f"{where} cannot be read: {path} ({e.strerror}); give a Jinja template file") from None

    @property
    def fusion_sources(self) -> list[SourceSpec]:
        """The sources whose responses are fused (role: source)."""
        return [s for s in self.sources if s.role == "source"]

    @property
    def target_samples(self) -> SourceSpec | None:
        """The entry of `sources` sampling the target itself (role: target), used for WRPO; None if there is none."""
        return next((s for s in self.sources if s.role == "target"), None)

    def source(self, name: str) -> SourceSpec:
        """The source called `name`; a RecipeError naming the closest one if there is none."""
        for src in self.sources:
            if src.name == name:
                return src
        names = [s.name for s in self.sources]
        raise RecipeError(f"{self.path or 'recipe'}: no source named {name!r}{_did_you_mean(name, names)}")

    def _validate(self, where: str) -> None:
        if not _NAME_RE.match(self.name):
            raise _fail("name", f"must be a simple folder name (letters, digits, '_', '.', '-'), got {self.name!r}")
        if not self.prompts:
            raise _fail("prompts", "must list at least one prompt builder")
        if not self.sources:
            raise _fail("sources", "must list at least one source")
        names: list[str] = []
        for i, src in enumerate(self.sources):
            if src.name in names:
                raise _fail(f"sources[{i}].name", f"repeats the source name {src.name!r}: source names must be unique")
            names.append(src.name)
        targets = [i for i, src in enumerate(self.sources) if src.role == "target"]
        if len(targets) > 1:
            raise _fail(f"sources[{targets[1]}].role", "only one entry may have role: target (the target's samples)")
        if len(targets) == len(self.sources):
            raise _fail("sources", "must list at least one source with role: source (the models to fuse)")
        fused = [s.name for s in self.fusion_sources]
        zh = self.building.zh_source
        if zh is not None and zh not in fused:
            raise _fail("building.zh_source", f"names no source: {zh!r}{_did_you_mean(zh, fused)}")
        for i, name in enumerate(self.controls.sources or []):
            if name not in fused:
                raise _fail(f"controls.sources[{i}]", f"names no source: {name!r}{_did_you_mean(name, fused)}")


def _check_min(where: str, name: str, value: float, lowest: float) -> None:
    if value < lowest:
        raise _fail(_key(where, name), f"must be >= {lowest}, got {value}")


def _check_band(where: str, band: list[float]) -> None:
    if len(band) != 2 or not 0 <= band[0] <= band[1]:
        raise _fail(where, f"must be two numbers [lo, hi] with 0 <= lo <= hi, got {band}")


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (choose from: {', '.join(choices)})" if choices else ""


# --------------------------------------------------------------------------- generic loader


def _yaml_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if len(repr(value)) > 40 else repr(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(tp: Any) -> str:
    """A type as an error message says it: `an integer`, `a list of strings`, ..."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    if origin in (list, tuple):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {str: "strings", int: "integers", float: "numbers", bool: "booleans"}.get(tp, _describe(tp))


def _convert(value: Any, tp: Any, where: str, default: Any = None) -> Any:
    """`value` from YAML checked against the type hint `tp`; `default` seeds a partial nested dataclass."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"recipe fields support Optional[X] only, not {tp}")  # a schema bug, not a user error
        if value is None:
            return None
        try:
            return _convert(value, options[0], where, default)
        except _Mismatch as e:
            if e.where != where:  # a deeper key is wrong, not this one
                raise
            raise _Mismatch(where, f"must be {_describe(tp)}, got {_show(value)}") from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch(where, f"must be {_describe(tp)} of keys, got {_show(value)}")
        return _to_dataclass(tp, value, where, default if isinstance(default, tp) else None)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise _Mismatch(where, f"must be {_describe(tp)}, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _fail(where, f"must be a list of {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, _key(where, i)) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, _key(where, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch(where, f"must be {_describe(tp)}, got {_show(value)}")
        if not args:  # free-form: passed on as written, checked by whoever consumes it
            return copy.deepcopy(value)
        for k in value:
            if not isinstance(k, str):
                raise _fail(_key(where, str(k)), f"must be a string key, got {_show(k)} (quote it in the YAML)")
        return {k: _convert(v, args[1], _key(where, k)) for k, v in value.items()}
    return _scalar(value, tp, where)


def _scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is Any:
        return value
    # bool is an int in Python, but `n: true` is a mistake, not 1.
    ok = {
        str: isinstance(value, str),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        bool: isinstance(value, bool),
    }.get(tp)
    if ok is None:
        raise TypeError(f"recipe fields do not support the type {tp}")  # a schema bug, not a user error
    if not ok:
        raise _Mismatch(where, f"must be {_describe(tp)}, got {_show(value)}")
    return float(value) if tp is float else value


class _Mismatch(RecipeError):
    """A value of the wrong type at key `where` (an Optional parent rewrites it to mention null)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(str(_fail(where, message)))
        self.where = where


def _to_dataclass(cls: type, raw: dict, where: str, base: Any = None) -> Any:
    """Build dataclass `cls` from a YAML mapping; keys left out come from `base`, else the field default."""
    fields = _yaml_fields(cls)
    names = [f.name for f in fields]
    for k in raw:
        if k not in names:
            raise RecipeError(f"unknown key '{_key(where, str(k))}'{_did_you_mean(str(k), names)}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        default = _field_default(f, base)
        if f.name in raw:
            kwargs[f.name] = _convert(raw[f.name], hints[f.name], _key(where, f.name), default)
        elif default is not dataclasses.MISSING:
            kwargs[f.name] = default
        else:
            raise RecipeError(f"missing required key '{_key(where, f.name)}'")
    obj = cls(**kwargs)
    if hasattr(obj, "_validate"):
        obj._validate(where)
    return obj


def _field_default(f: dataclasses.Field, base: Any) -> Any:
    if base is not None:
        return copy.deepcopy(getattr(base, f.name))
    if f.default is not dataclasses.MISSING:
        return copy.deepcopy(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


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
    """A copy of the raw recipe mapping with `key.path=value` overrides applied.

    Values are parsed as YAML (`8` is an integer, `[0.0, 1.0]` a list, `null` None); list
    items are addressed by index (`sources.0.sampling.n=8` or `sources[0].sampling.n=8`);
    missing mappings on the way are created. The result is validated by the loader.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        _apply_one(out, item)
    return out


def _apply_one(raw: dict, item: str) -> None:
    where = f"--set {item!r}"
    dotted, sep, text = item.partition("=")
    dotted = re.sub(r"\[(\d+)\]", r".\1", dotted.strip())
    parts = dotted.split(".")
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
            raise RecipeError(f"{where}: '{parent}' is {_show(node)}, not a mapping or list, so it has no '{part}'")
        if last:
            node[part] = value
        else:
            node = node[part]


def parse_recipe(raw: Any, source: str = "recipe") -> Recipe:
    """A validated Recipe from an already-parsed mapping; errors name `source` (the file)."""
    if raw is None:
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys (name:, prompts:, ...), got {_show(raw)}")
    try:
        recipe = _to_dataclass(Recipe, raw, "")
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    recipe.path = source
    for src in recipe.sources:
        recipe.chat_template(src)  # a missing template file fails at load, not days into sampling
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load, override (`--set key.path=value`) and validate the recipe at `path`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{source}: cannot read the recipe ({e})") from None
    try:
        raw = parse_yaml(text)
        if isinstance(raw, dict):
            raw = apply_overrides(raw, overrides)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    return parse_recipe(raw, source)


# --------------------------------------------------------------------------- helpers for stages


def resolve_model(ref: str) -> str:
    """A model reference as a loadable path or id: `toyworld:<name>` -> the shipped asset folder."""
    if not ref.startswith(TOYWORLD_PREFIX):
        return ref  # a local path or a Hub id: transformers and vLLM resolve those
    name = ref[len(TOYWORLD_PREFIX) :]
    folder = TOYWORLD_ASSETS / name
    if name and "/" not in name and folder.is_dir():
        return str(folder)
    available = sorted(p.name for p in TOYWORLD_ASSETS.iterdir() if p.is_dir()) if TOYWORLD_ASSETS.is_dir() else []
    if not available:
        raise RecipeError(f"model {ref!r}: no toyworld assets are built in {TOYWORLD_ASSETS}: run `make toyworld`")
    raise RecipeError(f"model {ref!r}: no such toyworld asset{_did_you_mean(name, available)}")


def as_dict(obj: Any) -> Any:
    """Dataclasses (nested in lists and dicts too) as plain JSON-able data, without loader-only fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_dict(getattr(obj, f.name)) for f in _yaml_fields(type(obj))}
    if isinstance(obj, list | tuple):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): as_dict(v) for k, v in obj.items()}
    return obj


def recipe_hash(obj: Any) -> str:
    """A stable hash of recipe settings (any dataclass, list or dict of them), for stage keys."""
    return stable_hash(as_dict(obj))
