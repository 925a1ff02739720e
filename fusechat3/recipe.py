"""The recipe: one YAML file per run, validated on load by the pydantic models below.

Every section is a `config.Section` (unknown keys are errors, nothing is coerced across
types); `config.validate` turns pydantic's errors into one `RecipeError` line naming the
file and the dotted key, with the closest valid key. Sections owned by a component live
next to it and are only assembled here: `sampling.params.GenParams` (a `sampling:` block),
`building.spec.BuildingSpec` (`building:`), `training.config.TrainSection` (`sft:`, `dpo:`,
`wrpo:`: TRL's own config fields, checked by TRL's classes when the stage starts).

Only pydantic and pyyaml are imported: the CLI loads recipes before any heavy library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from fusechat3.building.spec import BuildingSpec
from fusechat3.config import (
    KeyProblem,
    Section,
    apply_overrides,
    did_you_mean,
    model_ref,
    parse_yaml,
    read_yaml,
    show,
    simple_name,
    validate,
)
from fusechat3.errors import RecipeError
from fusechat3.evaluation.llm_judge import LLMJudgeSpec
from fusechat3.evaluation.spec import EvalSpec
from fusechat3.explicit.spec import TARGET_PART, ExplicitSpec
from fusechat3.merging.spec import MergeSpec
from fusechat3.prompt_spec import BuilderSpec, DecontaminationSpec
from fusechat3.ray_exec import RaySpec
from fusechat3.sampling.params import GenParams
from fusechat3.schema import stable_hash
from fusechat3.scoring.spec import CodeSpec, MathSpec, RewardSpec, ScoringSpec
from fusechat3.training.config import TrainSection

__all__ = ["Recipe", "RecipeError", "apply_overrides", "load_recipe", "parse_recipe", "parse_yaml"]

# Where `toyworld:<name>` model references point: the assets shipped inside the package.
TOYWORLD_ASSETS = Path(__file__).resolve().parent / "toyworld" / "assets"
TOYWORLD_PREFIX = "toyworld:"


class SourceSpec(Section):
    """A source LLM whose responses are fused into the target."""

    name: Annotated[str, simple_name("name")]  # short unique name; the `model` column of Sample and Score rows
    model: str  # local path, Hub id, or "toyworld:<asset>" (openai backend: the served model name)
    sampling: GenParams = GenParams()  # how this source is sampled
    domains: list[str] | None = Field(None, min_length=1)  # domains this source is sampled on (null: all)
    backend: str | None = None  # this source's sampling backend (null: sampler.backend)
    # This source's backend options, over sampler.engine: vLLM's tensor_parallel_size,
    # max_model_len, dtype, gpu_memory_utilization, enable_prefix_caching, revision,
    # trust_remote_code...; openai's base_url, api_key_env, max_concurrency...
    engine: dict = {}
    # A Jinja chat template file (relative to the recipe's folder) used instead of the
    # model's own; null: the tokenizer's template.
    chat_template: str | None = None
    # "source": a model whose responses are fused (SFT and DPO rows). "target": the target model's own
    # samples, scored like a source's and used only for WRPO's chosen/rejected (at most one such entry).
    role: Literal["source", "target"] = "source"
    # This source on a Ray cluster (replicas, GPUs per replica), over sampler.ray (fusechat3.ray_exec).
    ray: RaySpec | None = Field(None, exclude=True)  # where it runs: in no stage key

    _check_model = field_validator("model")(model_ref)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("must name a sampling backend (vllm, hf or openai) or be null")
        return value


class SamplerSpec(Section):
    """The sampling backend shared by every source."""

    backend: str = "vllm"  # vllm | hf | openai (a name in fusechat3.sampling's registry)
    # Free-form keyword arguments of the backend (dtype, max_model_len, tensor_parallel_size, ...).
    engine: dict = {}
    shard_size: int = Field(512, ge=1)  # prompts per shard: the unit of resume
    # Sample on a Ray cluster: {address, replicas, gpus_per_replica, cpus_per_replica} (fusechat3.ray_exec);
    # null: in this process. Where the shards are sampled does not change them (not in the stage keys).
    ray: RaySpec | None = Field(None, exclude=True)  # where it runs: in no stage key

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if not value:
            raise ValueError("must name a sampling backend (vllm, hf or openai), got ''")
        return value


class ModelSpec(Section):
    """The target model that is trained."""

    model: str  # local path, Hub id or "toyworld:<asset>"

    _check_model = field_validator("model")(model_ref)


class ControlsSpec(Section):
    """Control runs: the same target trained on one source's responses only, per source."""

    enabled: bool = False  # train the controls too
    sources: list[str] | None = None  # sources to make a control of (null: every source); must name sources
    # Controls trained at once, each in its own process with an equal share of the CPU threads (1: one after
    # another, in this process). On a CPU with small models, 2-3 at once use the cores better than one.
    parallel: int = Field(1, ge=1)


class Recipe(Section):
    """One run: prompts, sources, then implicit fusion (scoring, building, training: FuseChat-3.0) or explicit
    fusion (`explicit:`, `fuse_train:`: FuseLLM, FuseChat-1.0/2.0) or both, then evaluation."""

    name: Annotated[str, simple_name("folder name")]  # run name; the run directory defaults to runs/<name>
    # Prompt builders whose rows are concatenated, and the source LLMs (at least one with role: source; names
    # unique). Both may be left out of an evaluation-only recipe (no scoring:, no explicit:, an eval: section).
    prompts: list[BuilderSpec] = []
    sources: list[SourceSpec] = []
    # Reward model and correctness checks: the implicit path (sample, score, build, sft, dpo, wrpo, controls)
    # runs when this section is there.
    scoring: ScoringSpec | None = None
    target: ModelSpec  # the model that is trained
    run_dir: str | None = None  # default: runs/<name>, relative to the current directory
    seed: int = 0  # global seed (prompt order, training)
    sampler: SamplerSpec = SamplerSpec()  # sampling backend
    building: BuildingSpec = BuildingSpec()  # SFT/DPO selection rules
    # The training stages: TRL's config fields (SFTConfig, DPOConfig, WRPOConfig) and our options beside
    # them (peft, select_checkpoint, eval_files, ref_model), as in a training config file.
    sft: TrainSection = TrainSection()
    dpo: TrainSection = TrainSection()
    wrpo: TrainSection | None = None  # WRPO after SFT, on build/wrpo.parquet (needs a source with role: target)
    controls: ControlsSpec = ControlsSpec()  # single-source control runs
    eval: EvalSpec | None = None  # held-out evaluation (null: none)
    # Drop training prompts that share a word n-gram with these benchmark prompts (null: off).
    decontamination: DecontaminationSpec | None = None
    # Explicit fusion: the explicit path (corpus, represent, teacher, fuse-train) runs when this section is there.
    explicit: ExplicitSpec | None = None
    # The fusion training: transformers TrainingArguments fields plus fusion_lambda (training.fusion.FusionConfig),
    # and our options beside them (peft, eval_files), as in a training config file.
    fuse_train: TrainSection = TrainSection()
    # Merging the pairwise-fused targets (explicit.pairwise: true): name -> a merge (merge/<name>, target_merge_<name>).
    merge: dict[str, MergeSpec] | None = None

    _path: str = PrivateAttr("")  # the YAML file this recipe came from (set by the loader; not hashed)

    @field_validator("sources")
    @classmethod
    def _sources(cls, sources: list[SourceSpec]) -> list[SourceSpec]:
        if not sources:
            return sources  # an evaluation-only recipe; a fusion recipe without sources is `_something_to_do`'s
        names: list[str] = []
        for i, src in enumerate(sources):
            if src.name in names:
                raise KeyProblem((i, "name"), f"repeats the source name {src.name!r}: source names must be unique")
            names.append(src.name)
        targets = [i for i, src in enumerate(sources) if src.role == "target"]
        if len(targets) > 1:
            raise KeyProblem((targets[1], "role"), "only one entry may have role: target (the target's samples)")
        if len(targets) == len(sources):
            raise ValueError("must list at least one source with role: source (the models to fuse)")
        return sources

    @model_validator(mode="after")
    def _eval_models_have_their_own_names(self) -> Recipe:
        taken = {s.name for s in self.sources}
        for name in self.eval.models if self.eval is not None else {}:
            if name in taken or name.startswith("target_"):
                raise KeyProblem(
                    "eval", f"models: {name!r} is the name of a model of the run (a source or target_*); rename it"
                )
        return self

    @model_validator(mode="after")
    def _names_refer_to_sources(self) -> Recipe:
        fused = [s.name for s in self.fusion_sources]
        if self.scoring is None and self.explicit is None:
            if self.eval is None:
                raise KeyProblem(
                    "scoring",
                    "is missing: give scoring: (implicit fusion), explicit: (explicit fusion), or both; or only "
                    "eval: (evaluation of target and eval.models)",
                )
        else:
            for key in ("prompts", "sources"):
                if not getattr(self, key):
                    raise KeyProblem(key, f"is empty: a fusion recipe needs at least one entry in {key}")
        if self.explicit is not None:
            for i, name in enumerate(self.explicit.sources or []):
                if name not in fused:
                    raise KeyProblem(
                        ("explicit", "sources", i), f"names no source: {name!r}{did_you_mean(name, fused)}"
                    )
            if TARGET_PART in self.explicit_sources:
                raise KeyProblem("explicit.sources", f"{TARGET_PART!r} is the target's own part: rename that source")
            if self.explicit.corpus == "sft" and self.scoring is None:
                raise KeyProblem(
                    "explicit.corpus", "is 'sft', the build's SFT set: that needs scoring: (implicit path)"
                )
        zh = self.building.zh_source
        if zh is not None and zh not in fused:
            raise KeyProblem("building.zh_source", f"names no source: {zh!r}{did_you_mean(zh, fused)}")
        for i, name in enumerate(self.controls.sources or []):
            if name not in fused:
                raise KeyProblem(("controls", "sources", i), f"names no source: {name!r}{did_you_mean(name, fused)}")
        if self.wrpo is not None and self.target_samples is None:
            raise KeyProblem(
                "wrpo", "needs the target's own samples: add a source entry with role: target (model: the target)"
            )
        return self

    # ------------------------------------------------------------------ derived

    @property
    def path(self) -> str:
        """The YAML file this recipe came from ('' when built from a mapping)."""
        return self._path

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
    def explicit_sources(self) -> list[str]:
        """The sources fused by explicit fusion: `explicit.sources`, else every role: source entry ([] without it)."""
        if self.explicit is None:
            return []
        return list(self.explicit.sources or [s.name for s in self.fusion_sources])

    @property
    def checks(self) -> dict:
        """The correctness checks' settings (`scoring.checks`; the defaults in a recipe without scoring:)."""
        if self.scoring is not None:
            return self.scoring.checks
        return ScoringSpec.model_construct(code=CodeSpec(), math=MathSpec()).checks

    @property
    def eval_judge(self) -> RewardSpec | LLMJudgeSpec | None:
        """What judges win rates: `eval.llm_judge`, else the reward model `eval.judge`, else `scoring.reward_model`
        (None without any)."""
        judge = (self.eval.llm_judge or self.eval.judge) if self.eval is not None else None
        return judge or (self.scoring.reward_model if self.scoring is not None else None)

    @property
    def sandbox_batch_size(self) -> int:
        """`scoring.code.batch_size` (its default in a recipe without scoring:)."""
        return (self.scoring.code if self.scoring is not None else CodeSpec()).batch_size

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
        raise RecipeError(f"{self.path or 'recipe'}: no source named {name!r}{did_you_mean(name, names)}")


# --------------------------------------------------------------------------- loading


def parse_recipe(raw: Any, source: str = "recipe") -> Recipe:
    """A validated Recipe from an already-parsed mapping; errors name `source` (the file)."""
    if raw is None:
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys (name:, prompts:, ...), got {show(raw)}")
    recipe = validate(Recipe, raw, source=source)
    recipe._path = source
    for src in recipe.sources:
        recipe.chat_template(src)  # a missing template file fails at load, not days into sampling
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load, override (`--set key.path=value`) and validate the recipe at `path`."""
    return parse_recipe(read_yaml(path, overrides), str(path))


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
    raise RecipeError(f"model {ref!r}: no such toyworld asset{did_you_mean(name, available)}")


def as_dict(obj: Any) -> Any:
    """Settings models (nested in lists and dicts too) as plain JSON-able data."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, list | tuple):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): as_dict(v) for k, v in obj.items()}
    return obj


def recipe_hash(obj: Any) -> str:
    """A stable hash of recipe settings (any settings model, list or dict of them), for stage keys."""
    return stable_hash(as_dict(obj))
