"""The `scoring:` section of a recipe: the reward model (also the eval stage's win-rate judge) and the settings of
the correctness checks (the code sandbox, the math answer check). Only pydantic is imported here."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from fusechat3.config import Section, model_ref
from fusechat3.ray_exec import RaySpec


class RewardSpec(Section):
    """The reward model that scores every response."""

    model: str  # a ...ForSequenceClassification model: local path, Hub id or "toyworld:<asset>"
    batch_size: int = Field(16, ge=1)  # most responses per forward pass
    # Most padded tokens (rows x longest) per forward pass; null: no budget.
    max_tokens_per_batch: int | None = Field(16384, ge=1)
    max_length: int = Field(4096, ge=1)  # longer prompt+response pairs are not truncated: reward null, "too_long"
    dtype: str | None = None  # torch dtype name (bfloat16, float32, ...); null: the model's own
    trust_remote_code: bool = False  # needed by reward models with custom code (e.g. ArmoRM)
    # A name in fusechat3.scoring.reward's registry: "transformers", or "vllm" (vLLM's pooling runner,
    # for architectures vLLM supports). Checked against the registry when the score stage starts.
    backend: str = "transformers"
    revision: str | None = None  # a Hub revision (branch, tag or commit) of the reward model

    _check_model = field_validator("model")(model_ref)

    def load(self) -> Any:
        """The `fusechat3.scoring.reward.RewardModel` these settings describe (loaded; close it after use)."""
        from fusechat3.recipe import resolve_model
        from fusechat3.scoring.reward import RewardModel

        return RewardModel(
            resolve_model(self.model),
            batch_size=self.batch_size,
            max_length=self.max_length,
            max_tokens_per_batch=self.max_tokens_per_batch,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            backend=self.backend,
        )


class CodeSpec(Section):
    """The sandbox that runs code responses against their tests."""

    timeout_s: float = Field(10.0, gt=0)  # wall-clock limit per response, seconds
    memory_mb: int = Field(1024, ge=1)  # address-space limit per response, MiB
    workers: int = Field(0, ge=0)  # parallel sandboxes; 0: one per CPU core
    # Programs run one after the other in one sandbox, each in a fresh worker (1: a sandbox per program, ~5x slower
    # on the toy world's programs, benchmarks/sandbox_throughput.py). Verdicts do not depend on it: it is left out
    # of the stage keys (exclude), so changing it re-scores nothing.
    batch_size: int = Field(16, ge=1, exclude=True)


class MathSpec(Section):
    """The math answer check (`fusechat3.scoring.math`)."""

    # A response with no extractable final answer: true, incorrect (verdict no_answer, correct false: it can be a
    # DPO rejected response, as the paper's "incorrect answers"); false, unchecked (correct null, as before).
    no_answer_is_wrong: bool = True


class ScoringSpec(Section):
    """How responses are scored: reward model plus correctness checks."""

    reward_model: RewardSpec  # required: scores every response
    code: CodeSpec = CodeSpec()  # sandbox settings for code prompts
    math: MathSpec = MathSpec()  # the math answer check
    shard_size: int = Field(2048, ge=1)  # samples per shard: the unit of resume
    # Score on a Ray cluster: {address, replicas, gpus_per_replica, cpus_per_replica} (fusechat3.ray_exec), each
    # replica with its own reward model and sandbox; null: in this process. Not in the stage key (same rows).
    ray: RaySpec | None = Field(None, exclude=True)

    @property
    def checks(self) -> dict:
        """The correctness checks' settings, as `scoring.verify.verify_many` takes them (score and eval stages);
        also part of the eval stage's key, so `batch_size` (no effect on a verdict) is passed beside them."""
        return {
            "timeout_s": self.code.timeout_s,
            "memory_mb": self.code.memory_mb,
            "workers": self.code.workers,
            "no_answer_is_wrong": self.math.no_answer_is_wrong,
        }
