"""The "transformers" reward backend (the default): any `AutoModelForSequenceClassification` with one output,
or a custom-code reward model whose output carries a `score` field (ArmoRM-style, `trust_remote_code`).

ArmoRM (a config whose `architectures` is `LlamaForRewardModelWithGating`, e.g. `RLHFlow/ArmoRM-Llama3-8B-v0.1`)
is always loaded by the native class of `fusechat3.scoring.armorm`, whatever `trust_remote_code` says: its
published remote code does not load under transformers 5, and without remote code the Auto classes would
take it for a plain Llama classifier (its config says `model_type: "llama"`).

- Conversations are sorted by length (longest first, so an out-of-memory shows up at once) and cut into
  batches under a token budget (rows x longest <= `max_tokens_per_batch`, at most `batch_size` rows), padded
  on the right; results go back in input order. The model's own pooling reads the score at the last non-pad
  token. Right padding with an attention mask leaves every real token's computation unchanged, so a score does
  not depend on what it is batched with (to float rounding).
- The reward is the output's `score` when it has one (custom reward models put their preference score there
  and other heads in `logits`), else `logits[:, 0]`.

torch and transformers are imported inside the methods.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fusechat3.scoring.reward import RewardModel, register_reward, token_budget_batches

log = logging.getLogger(__name__)


def _names_armorm(model: str, load: dict[str, Any]) -> bool:
    """Whether `model`'s config.json names ArmoRM's architecture (read without running any remote code)."""
    from transformers import PreTrainedConfig

    from fusechat3.scoring.armorm import is_armorm

    config, _ = PreTrainedConfig.get_config_dict(model, revision=load.get("revision"))
    return is_armorm(config)


@register_reward("transformers")
class TransformersRewardModel(RewardModel):
    """`RewardModel(model, backend="transformers", device=..., dtype=..., ...)`; `.model` is the loaded model."""

    def _load(self, load: dict[str, Any], *, device: str | None, dtype: str | None) -> Any:
        import torch
        from transformers import AutoModelForSequenceClassification

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float32" if device == "cpu" else "auto")
        device_map = "auto" if device == "auto" else None
        if _names_armorm(self.name, load):
            from fusechat3.scoring.armorm import load_armorm

            if load.get("trust_remote_code"):
                log.info("reward model %s: trust_remote_code ignored, ArmoRM is loaded natively", self.name)
            self.model = load_armorm(
                self.name, revision=load.get("revision"), tokenizer=self.tokenizer, dtype=dtype, device_map=device_map
            )
        else:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.name, dtype=dtype, device_map=device_map, **load
            )
        if device != "auto":
            self.model.to(device)
        self.model.eval()
        return self.model.config

    def _values(self, sequences: list[list[int]]) -> list[float]:
        from fusechat3.logs import progress

        values: list[float] = [math.nan] * len(sequences)
        batches = token_budget_batches([len(s) for s in sequences], self.batch_size, self.max_tokens_per_batch)
        with progress(len(sequences), f"reward {self.name}", "sample", nested=True) as bar:
            for batch in batches:
                for k, value in zip(batch, self._forward([sequences[k] for k in batch]), strict=True):
                    values[k] = value
                bar.update(len(batch))
        return values

    def _forward(self, sequences: list[list[int]]) -> list[float]:
        import torch

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding: positions of the real tokens start at 0
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        device = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        # Custom-code reward models (e.g. ArmoRM) return their preference score as `score`; others as `logits`.
        values = getattr(out, "score", None)
        values = out.logits if values is None else values
        return self._one_value_each(values.float().reshape(len(sequences), -1).tolist())
