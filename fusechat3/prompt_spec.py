"""The recipe's prompt sections: which data builders make the prompt set (`prompts:`, `eval.prompts`) and the
benchmark prompts training prompts are decontaminated against (`decontamination:`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from fusechat3.config import Section, in_range


class BuilderSpec(Section):
    """A data builder from data_builders/, by registry name."""

    builder: str  # registry name of the builder module in data_builders/
    args: dict = {}  # free-form keyword arguments passed to the builder
    # Keep this spec's math and code prompts in the instruction and zh domains (prompts stage; by
    # default they are removed, as in FuseChat-3.0).
    keep_math_code: bool = False
    # After the shared filters, keep this fraction of the spec's rows, then at most `limit` of them,
    # chosen by a hash of prompt_id and the recipe seed (deterministic); null limit: no cap.
    limit: int | None = Field(None, ge=1)
    fraction: Annotated[float, in_range(0, 1, open_low=True)] = 1.0

    @field_validator("builder")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("must name a data builder, got ''")
        return value


class DecontaminationSpec(Section):
    """Benchmark prompts that no training prompt may share a word n-gram with (prompts stage)."""

    prompts: list[BuilderSpec] = Field(min_length=1)  # builders of the benchmark prompts
    ngram: int = Field(13, ge=1)  # n-gram length in words; shorter prompts are matched only whole
