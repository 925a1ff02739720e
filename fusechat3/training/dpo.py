"""Preference training of the SFT'd target on the built pairs, with TRL's DPOTrainer.

FuseChat-3.0 trains the Llama targets with length-normalized DPO, which TRL has as
`loss_type: [sigmoid_norm]`: loss = -log σ(β/|y_w|·log(πθ/πref)(y_w|x) − β/|y_l|·log(πθ/πref)(y_l|x)).
The rows are already TRL's conversational preference form (`prompt`, `chosen`, `rejected`);
only those columns are read. Without `ref_model` the reference is the starting model
(with `precompute_ref_log_probs: true` its log-probs are computed once, before training).
LoRA (`peft:`), resuming (`dpo.resume_from_checkpoint`) and the paper's checkpoint choice
(`select_checkpoint:`, by eval loss or reward accuracy on held-out pairs) work as for SFT.

On a cluster:

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m fusechat3.training.dpo \\
        --config recipes/fusechat3/llama-3.1-8b/dpo.yaml [--set dpo.beta=5 ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fusechat3.training.data import clean_messages
from fusechat3.training.launch import Method, main_for, train_from_files
from fusechat3.training.preference import PAIR_COLUMNS, build_preference_trainer, pair_problem

DPO_COLUMNS = PAIR_COLUMNS  # TRL's columns of a DPO row; the analysis columns are not read
# What DPOTrainer.evaluate() reports that can choose a checkpoint (select_checkpoint.metric):
# rewards/accuracies is the share of held-out pairs whose chosen response gets the higher implicit reward.
DPO_METRICS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")


def dpo_row(row: dict) -> dict:
    """One preference row with only role/content messages, and `skip` = why it cannot be trained on ('')."""
    if reason := pair_problem(row):
        return {"prompt": [], "chosen": [], "rejected": [], "skip": reason}
    return {column: clean_messages(row[column]) for column in DPO_COLUMNS} | {"skip": ""}


def build_dpo_trainer(
    model: str,
    train_dataset: Any,
    config: Any,
    *,
    ref_model: str | None = None,
    eval_dataset: Any | None = None,
    peft_config: Any = None,
) -> Any:
    """A ready `trl.DPOTrainer` on datasets with `prompt`/`chosen`/`rejected` columns (rows checked first)."""
    from trl import DPOTrainer

    return build_preference_trainer(
        DPOTrainer, dpo_row, DPO_COLUMNS, "dpo", model, train_dataset, config,
        ref_model=ref_model, eval_dataset=eval_dataset, peft_config=peft_config,
    )  # fmt: skip


def _config_cls() -> type:
    from trl import DPOConfig

    return DPOConfig


DPO = Method(
    section="dpo",
    label="DPO",
    columns=DPO_COLUMNS,
    config_cls=_config_cls,
    metrics=DPO_METRICS,
    build_trainer=build_dpo_trainer,
    description="DPO of a target model with TRL (FuseChat-3.0).",
    ref_model=True,
)


def dpo_config(args: dict, output_dir: str) -> Any:
    """A `trl.DPOConfig` from the `dpo:` fields; a RecipeError naming a bad key and the closest valid one."""
    return DPO.make_config(args, output_dir)


def train_dpo(
    model: str,
    train_files: list[str],
    output_dir: str,
    args: dict,
    *,
    ref_model: str | None = None,
    eval_files: list[str] | None = None,
    peft: dict | None = None,
    select_checkpoint: Any = None,
) -> str:
    """DPO `model` on parquet preference rows with TRL `DPOConfig` fields `args`; returns `output_dir`.

    `peft`: peft.LoraConfig fields (+ `merge`) for LoRA; `select_checkpoint`: `{metric, last}` to keep the
    best of the last checkpoints on the held-out pairs of `eval_files`.
    """
    return train_from_files(
        DPO, model, train_files, output_dir, args,
        eval_files=eval_files, ref_model=ref_model, peft=peft, select_checkpoint=select_checkpoint,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fusechat3.training.dpo --config FILE [--set key=value ...]`."""
    return main_for(DPO, argv)


if __name__ == "__main__":
    sys.exit(main())
