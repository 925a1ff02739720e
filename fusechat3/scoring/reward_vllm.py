"""The "vllm" reward backend: the forward passes run in an offline, in-process vLLM pooling engine
(`fusechat3.vllm_engine`), for the architectures vLLM knows as `...ForSequenceClassification` (not custom
code), with the same rendering, length check and verdicts as every backend (`fusechat3.scoring.reward`).

The reward is the classifier's raw logit (vLLM's `classify` would apply a sigmoid / softmax by default).
vLLM batches and schedules the sequences itself: `batch_size` and `max_tokens_per_batch` are not used, nor
is `device` (vLLM's choice); `engine_kwargs` go to `vllm.LLM`. vLLM and torch are imported inside methods.

ArmoRM (`architectures: [LlamaForRewardModelWithGating]`, e.g. `RLHFlow/ArmoRM-Llama3-8B-v0.1`) is refused in
one line before any engine starts: vLLM has no pooler for its prompt-gated multi-objective head (it would pool
it as a plain Llama); it needs `backend: transformers` (`fusechat3.scoring.armorm`).
"""

from __future__ import annotations

from typing import Any

from fusechat3.errors import UserError
from fusechat3.scoring.reward import RewardModel, register_reward
from fusechat3.vllm_engine import close_llm, open_llm

ARMORM_ARCHITECTURE = "LlamaForRewardModelWithGating"  # fusechat3.scoring.armorm.ARCHITECTURE (imports torch)


@register_reward("vllm")
class VllmRewardModel(RewardModel):
    """`RewardModel(model, backend="vllm", dtype=..., engine_kwargs={...})`; `.llm` is the engine."""

    llm: Any = None
    _architectures: list[str] = []

    def _load(self, load: dict[str, Any], *, device: str | None, dtype: str | None) -> Any:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.name, **load)
        self._architectures = list(getattr(config, "architectures", None) or [])
        return config

    def _start(self, load: dict[str, Any], *, dtype: str | None, engine_kwargs: dict[str, Any]) -> None:
        if ARMORM_ARCHITECTURE in self._architectures:  # before any engine starts (outside _load's "cannot load")
            raise UserError(
                f"reward model {self.name!r} is ArmoRM ({ARMORM_ARCHITECTURE}), which vLLM cannot pool (its score is "
                "a prompt-gated mix of several objectives); set scoring.reward_model.backend: transformers"
            )
        kwargs: dict[str, Any] = {"max_model_len": self.max_length}
        if dtype:
            kwargs["dtype"] = dtype
        kwargs.update(engine_kwargs)
        try:
            self.llm = open_llm(
                self.name, runner="pooling", where=f"reward model {self.name} engine_kwargs", **load, **kwargs
            )
        except UserError:  # an unknown engine option: already one line
            raise
        except ValueError as e:
            # vLLM's config checks (an architecture it cannot pool, an engine option out of range, too little
            # memory for max_model_len) raise ValueError, pydantic's included; anything else keeps its traceback.
            reason = " ".join(str(e).split())[:300]
            raise UserError(
                f"reward model {self.name!r}: vLLM cannot start a pooling engine for it ({reason}); fix its "
                "engine_kwargs, or use backend 'transformers'"
            ) from e

    def _values(self, sequences: list[list[int]]) -> list[float]:
        from vllm import PoolingParams

        prompts = []
        for seq in sequences:
            # vLLM pools at the last token; transformers at the last one that is not `pad_token_id`. Dropping
            # trailing pad ids (where pad = EOS and the template ends with it) makes both pool the same token.
            end = len(seq)
            while end > 1 and seq[end - 1] == self.pad_id:
                end -= 1
            prompts.append({"prompt_token_ids": seq[:end]})
        # Raw logits: vLLM's classify applies a sigmoid/softmax by default. No bar of its own: the score
        # stage shows one for the whole stage.
        outs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return self._one_value_each([list(o.outputs.probs) for o in outs])

    def _release(self) -> None:
        super()._release()
        close_llm(self)
