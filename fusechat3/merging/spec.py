"""`MergeSpec`: one merge of a run's pairwise-fused targets (the recipe's `merge:` section maps a name to each).

The stage fills in the inputs: every `fuse-train/<source>` model of the explicit path (with
`explicit.pairwise: true`), and the target before fusion (the pivot) as the base of the methods that take
one. The rest is mergekit's config format (`merge_method`, `parameters`, `dtype`, `out_dtype`,
`tokenizer_source`), or a MergeBench `preset`, as in a `fusechat3 merge` config file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from fusechat3.config import Section


class MergeSpec(Section):
    merge_method: str | None = None  # a mergekit method or ours (varm, sce_fusechat, consensus_ta)
    preset: str | None = None  # or a MergeBench preset (model_soup, task_arithmetic, ties, dare, consensus_ta)
    parameters: dict[str, Any] = {}  # the method's parameters, for every input (mergekit's top-level `parameters`)
    dtype: Literal["float32", "float64"] | None = None  # the compute dtype (default float32)
    out_dtype: str | None = None  # the stored dtype (default: the target's)
    tokenizer_source: str | None = None  # mergekit's option; the pairwise targets share the target's tokenizer
    seed: int | None = None  # the random methods' seed (DARE); default: the recipe's seed

    @model_validator(mode="after")
    def _one_method(self) -> MergeSpec:
        if (self.merge_method is None) == (self.preset is None):
            raise ValueError("give merge_method or preset (one of the two)")
        return self

    def config(self, models: list[str], seed: int) -> dict:
        """The mergekit config mapping of this merge of `models` (the stage adds the base where one is taken)."""
        raw: dict[str, Any] = {k: v for k, v in self.model_dump().items() if v not in (None, {})}
        raw.setdefault("seed", seed)
        raw["models"] = [{"model": m} for m in models]
        return raw
