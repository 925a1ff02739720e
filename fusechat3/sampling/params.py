"""`GenParams`: how a model is sampled. One class for the recipe's `sampling:` blocks (per source,
and `eval.sampling`) and for the samplers' `generate` calls.

The fields are vLLM's `SamplingParams` names (the openai and hf backends translate them), plus
`n_per_domain` (the paper samples 8 responses for code and 1 for Chinese, 5 elsewhere) and `seed`,
the base from which each prompt's own seed is derived.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from fusechat3.config import Section, in_range


class GenParams(Section):
    """How one model is sampled (vLLM SamplingParams fields)."""

    added_later = ("presence_penalty", "frequency_penalty")

    n: int = Field(5, ge=1)  # responses per prompt
    # Override n by domain (paper: 8 for code, 1 for zh).
    n_per_domain: dict[str, Annotated[int, Field(ge=1)]] = {}
    temperature: float = Field(0.8, ge=0.0)  # softmax temperature; 0 is greedy
    top_p: Annotated[float, in_range(0, 1, open_low=True)] = 0.95  # nucleus sampling mass
    top_k: int = Field(-1, ge=-1)  # keep the k most likely tokens; -1 (or 0) turns it off
    repetition_penalty: float = Field(1.0, gt=0.0)  # > 1 discourages repeats (the paper uses 1.05 for Qwen)
    # OpenAI's additive penalties on tokens already generated (once / per occurrence); vLLM and the openai backend
    # apply them, transformers (the hf backend) has neither.
    presence_penalty: Annotated[float, in_range(-2, 2)] = 0.0
    frequency_penalty: Annotated[float, in_range(-2, 2)] = 0.0
    max_tokens: int = Field(2048, ge=1)  # longest response, in tokens
    seed: int = 0  # base seed: each prompt is sampled with a seed derived from it and its prompt_id
    stop: list[str] = []  # extra stop strings besides the chat template's end token

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: list[str]) -> list[str]:
        if not all(value):
            raise ValueError(f"must be a list of non-empty strings, got {value!r}")
        return value

    def n_for(self, domain: str) -> int:
        """How many responses to sample for a prompt of `domain`."""
        return self.n_per_domain.get(domain, self.n)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_n(self, n: int) -> GenParams:
        """A copy asking for `n` responses per prompt (the per-domain overrides already applied)."""
        return self.model_copy(update={"n": n, "n_per_domain": {}})
