"""Fusion training of explicit fusion (FuseLLM, FuseChat-1.0/2.0): the target trained on the teacher
rows of the `teacher` stage with `FusionTrainer` (fusion_trainer.py), loss

    lambda x CE(gold) + (1 - lambda) x CE(fused teacher, student),   lambda = `fusion_lambda` (0.9)

The config section is `fuse_train:`: transformers TrainingArguments fields plus `fusion_lambda`
(`FusionConfig`), with `peft:` beside it as for SFT. A run's `fuse-train` stage calls this; on a
cluster the same runs under accelerate:

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m fusechat3.training.fusion \\
        --config fuse_train.yaml [--set fuse_train.learning_rate=1e-5 ...]

where fuse_train.yaml has `model:`, `train_files:` (the teacher's parquet files), `output_dir:` and
`fuse_train:`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fusechat3.errors import RowError
from fusechat3.training.launch import Method, main_for

FUSION_COLUMNS = ("input_ids", "labels", "fused_ids", "fused_probs")
FUSION_METRICS = ("eval_loss",)


def check_rows(dataset: Any, where: str) -> None:
    """Every row's four columns cover the same positions; else one line naming the row."""
    lengths = [
        [len(x) for x in dataset[column]] for column in FUSION_COLUMNS
    ]  # one pass per column: no per-row Python objects of the teacher lists
    for i, (n, *others) in enumerate(zip(*lengths, strict=True)):
        if any(m != n for m in others) or n < 2:
            raise RowError(
                f"{where}: row {i} has input_ids/labels/fused_ids/fused_probs of lengths {[n, *others]}: "
                "they must be equal and at least 2 (rows come from `fusechat3 teacher`)"
            )


def build_fusion_trainer(
    model: str, train_dataset: Any, config: Any, eval_dataset: Any | None = None, *, peft_config: Any = None
) -> Any:
    """A ready `FusionTrainer` on datasets with the teacher columns (rows checked first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.training.fusion_trainer import FusionTrainer

    check_rows(train_dataset, "fuse_train train")
    if eval_dataset is not None:
        check_rows(eval_dataset, "fuse_train eval")
    tokenizer = AutoTokenizer.from_pretrained(model)
    student = AutoModelForCausalLM.from_pretrained(model)
    if peft_config is not None:
        from peft import get_peft_model

        student = get_peft_model(student, peft_config)
    return FusionTrainer(
        model=student, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )


def _config_cls() -> type:
    from fusechat3.training.fusion_trainer import FusionConfig

    return FusionConfig


FUSION = Method(
    section="fuse_train",
    label="fusion",
    columns=FUSION_COLUMNS,
    config_cls=_config_cls,
    metrics=FUSION_METRICS,
    build_trainer=build_fusion_trainer,
    description="Fusion training of a target model on a fused teacher (FuseLLM, FuseChat).",
    module="fusion",
)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fusechat3.training.fusion --config FILE [--set key=value ...]`."""
    return main_for(FUSION, argv)


if __name__ == "__main__":
    sys.exit(main())
