"""The recipe's `eval:` section: the benchmarks, the extra models, the judge of win rates and how each benchmark is
sampled."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fusechat3.config import Section, simple_name
from fusechat3.evaluation.llm_judge import LLMJudgeSpec
from fusechat3.prompt_spec import BuilderSpec
from fusechat3.sampling.params import GenParams
from fusechat3.scoring.spec import RewardSpec

_EVAL_SAMPLING = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 512}


class EvalSpec(Section):
    """Held-out evaluation of the trained models."""

    added_later = ("llm_judge", "sampling_per_benchmark", "preset")

    prompts: list[BuilderSpec] = Field(min_length=1)  # evaluation prompt builders
    # More models to evaluate beside the run's own, by scoreboard name: a model folder (trained outside the run, e.g.
    # by `accelerate launch`) or a Hub id (a released fused model), sampled with `sampler`.
    models: dict[Annotated[str, simple_name("model name")], str] = {}
    # The reward model that judges win rates against a benchmark's baseline answers (AlpacaEval, Arena-Hard);
    # null: the recipe's scoring.reward_model. Prompts without baseline answers never load it.
    judge: RewardSpec | None = None
    # An LLM on an OpenAI-compatible server judging the win rates instead of a reward model (each prompt judged in
    # both orders): {model: <served name>, base_url: ..., api_key_env: ...}. Not with `judge`.
    llm_judge: LLMJudgeSpec | None = None
    # How models are sampled for evaluation: greedy, one response, by default; keys given here
    # change those defaults (a partial block keeps the others, not the sources' sampling defaults).
    sampling: GenParams = GenParams(**_EVAL_SAMPLING)
    # Keys that change `sampling` for one benchmark (a scoreboard column: gsm8k, alpaca_eval, ...), e.g.
    # {alpaca_eval: {temperature: 0.6, max_tokens: 4096}}.
    sampling_per_benchmark: dict[str, dict[str, Any]] = {}
    # FuseEval's settings for a target family under sampling_per_benchmark (fusechat3.evaluation.presets).
    preset: Literal["fuseeval-llama3", "fuseeval-qwen2.5", "fuseeval-gemma2"] | None = None

    def params_for(self, benchmark: str) -> GenParams:
        """How a benchmark's prompts are sampled: `sampling`, then the preset's keys, then sampling_per_benchmark's."""
        from fusechat3.evaluation.presets import PRESETS

        preset = PRESETS[self.preset].get(benchmark, {}) if self.preset else {}
        keys = {**self.sampling.model_dump(), **preset, **self.sampling_per_benchmark.get(benchmark, {})}
        return GenParams(**keys)

    @model_validator(mode="after")
    def _benchmark_sampling_is_valid(self) -> EvalSpec:
        for bench, keys in self.sampling_per_benchmark.items():
            try:
                GenParams(**{**self.sampling.model_dump(), **keys})
            except ValidationError as err:
                problem = err.errors()[0]
                where = ".".join(str(x) for x in problem["loc"])
                raise ValueError(f"sampling_per_benchmark.{bench}.{where}: {problem['msg']}") from None
        return self

    @model_validator(mode="after")
    def _one_judge(self) -> EvalSpec:
        if self.judge is not None and self.llm_judge is not None:
            raise ValueError("set either judge (a reward model) or llm_judge (an LLM on a server), not both")
        return self

    @field_validator("sampling", mode="before")
    @classmethod
    def _eval_defaults(cls, value: Any) -> Any:
        return {**_EVAL_SAMPLING, **value} if isinstance(value, dict) else value
