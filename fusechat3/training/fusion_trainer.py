"""The fusion trainer of explicit fusion (FuseLLM, FuseChat): `FusionConfig` (transformers'
TrainingArguments plus `fusion_lambda`) and `FusionTrainer`, a small subclass of transformers' Trainer.

A row is a tokenized text with its labels and the fused teacher at every position (the sparse
output of `explicit.teacher`): `input_ids`, `labels` (-100 where there is no loss), `fused_ids`
and `fused_probs` ([L][K] each). The loss is `explicit.fuse.fusion_loss`:

    lambda x CE(gold) + (1 - lambda) x CE(fused teacher, student),   lambda = 0.9 (the papers')

What the subclass changes in transformers' Trainer, and nothing more: the collator pads the four
columns (K ids per position, never a [batch, length, vocab] target: the student's log-probs are
gathered at those ids), and `compute_loss`. It is a Trainer, not TRL's SFTTrainer, because the rows
arrive tokenized with their teacher aligned to each token: SFTTrainer's own tokenization and
packing would break that alignment. Launch it as any Trainer (`accelerate launch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from fusechat3.explicit.fuse import fusion_loss

FUSION_COLUMNS = ("input_ids", "labels", "fused_ids", "fused_probs")


@dataclass
class FusionConfig(TrainingArguments):
    """transformers' TrainingArguments plus the weight of the gold-text loss."""

    fusion_lambda: float = field(
        default=0.9, metadata={"help": "lambda: weight of CE(gold); 1 - lambda on CE(fused teacher, student)."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "the fused columns must reach the collator"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.fusion_lambda <= 1.0:
            raise ValueError(f"fusion_lambda must be in [0, 1], got {self.fusion_lambda}")


@dataclass
class FusionCollator:
    """Right-pads a batch of fusion rows: ids with `pad_token_id`, labels -100, teacher ids -1 and
    probabilities 0 (K columns, the widest row's)."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
        k = max(len(r["fused_ids"][0]) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        fused_ids = torch.full((batch, length, k), -1, dtype=torch.long)
        fused_probs = torch.zeros((batch, length, k), dtype=torch.float32)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[b, :n] = torch.as_tensor(r["input_ids"])
            attention[b, :n] = 1
            labels[b, :n] = torch.as_tensor(r["labels"])
            ids = torch.as_tensor(r["fused_ids"])
            fused_ids[b, :n, : ids.shape[1]] = ids
            fused_probs[b, :n, : ids.shape[1]] = torch.as_tensor(r["fused_probs"], dtype=torch.float32)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "fused_ids": fused_ids,
            "fused_probs": fused_probs,
        }


class FusionTrainer(Trainer):
    """transformers' Trainer with the fusion loss (module docstring)."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("data_collator") is None:
            tok = kwargs.get("processing_class")
            pad = getattr(tok, "pad_token_id", None)
            kwargs["data_collator"] = FusionCollator(pad if pad is not None else 0)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, fused_ids, fused_probs = inputs.pop("labels"), inputs.pop("fused_ids"), inputs.pop("fused_probs")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        lam = getattr(self.args, "fusion_lambda", 0.9)
        loss = fusion_loss(outputs.logits, labels, fused_ids, fused_probs, lam)
        return (loss, outputs) if return_outputs else loss
