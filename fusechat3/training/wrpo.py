"""Weighted-reward preference optimization (WRPO, arXiv 2412.03187) of the SFT'd target on the built
triplets, with `WRPOTrainer` (a small subclass of TRL's DPOTrainer, in `wrpo_trainer`).

A WRPO row is a DPO row plus `source_chosen`: the best response of a source model beside the
target's own best (`chosen`) and worst (`rejected`) responses; the loss mixes the source's and
the target's chosen responses with a weight α that rises from 0 to `wrpo_alpha` over training
(`wrpo_trainer` has the formula). The paper's settings: α = 0.1, β = 0.01, lr 3e-7.

LoRA (`peft:`), resuming (`wrpo.resume_from_checkpoint`) and the checkpoint choice
(`select_checkpoint:`, by eval loss or reward accuracy on held-out rows) work as for DPO.

On a cluster:

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m fusechat3.training.wrpo \\
        --config recipes/wrpo/llama-3.1-8b.yaml [--set wrpo.wrpo_alpha=0.2 ...]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from fusechat3.training.data import clean_messages
from fusechat3.training.dpo import DPO_METRICS
from fusechat3.training.launch import Method, main_for, train_from_files
from fusechat3.training.preference import WRPO_COLUMNS, build_preference_trainer, pair_problem

# What WRPOTrainer.evaluate() reports that can choose a checkpoint (select_checkpoint.metric): DPO's names, with
# rewards/accuracies = the share of held-out rows whose mixed chosen reward beats the rejected one.
WRPO_METRICS = DPO_METRICS


def triplet_problem(row: dict) -> str:
    """Why a WRPO row cannot be trained on ('' if it can): the DPO checks on (chosen, rejected), then on
    (source_chosen, rejected), with the reason naming `source_chosen`."""
    if reason := pair_problem(row):
        return reason
    source_pair = {"prompt": row["prompt"], "chosen": row["source_chosen"], "rejected": row["rejected"]}
    return re.sub(r"\bchosen\b", "source_chosen", pair_problem(source_pair))


def wrpo_row(row: dict) -> dict:
    """One WRPO row with only role/content messages, and `skip` = why it cannot be trained on ('')."""
    if reason := triplet_problem(row):
        return {column: [] for column in WRPO_COLUMNS} | {"skip": reason}
    return {column: clean_messages(row[column]) for column in WRPO_COLUMNS} | {"skip": ""}


def build_wrpo_trainer(
    model: str,
    train_dataset: Any,
    config: Any,
    *,
    ref_model: str | None = None,
    eval_dataset: Any = None,
    peft_config: Any = None,
) -> Any:
    """A ready `WRPOTrainer` on datasets with the WRPO columns (rows checked first, bad ones counted and skipped)."""
    from fusechat3.training.wrpo_trainer import WRPOTrainer

    return build_preference_trainer(
        WRPOTrainer, wrpo_row, WRPO_COLUMNS, "wrpo", model, train_dataset, config,
        ref_model=ref_model, eval_dataset=eval_dataset, peft_config=peft_config,
    )  # fmt: skip


def _config_cls() -> type:
    from fusechat3.training.wrpo_trainer import WRPOConfig

    return WRPOConfig


WRPO = Method(
    section="wrpo",
    label="WRPO",
    columns=WRPO_COLUMNS,
    config_cls=_config_cls,
    metrics=WRPO_METRICS,
    build_trainer=build_wrpo_trainer,
    description="WRPO of a target model with TRL (arXiv 2412.03187).",
    ref_model=True,
)


def wrpo_config(args: dict, output_dir: str) -> Any:
    """A `WRPOConfig` from the `wrpo:` fields; a RecipeError naming a bad key and the closest valid one."""
    return WRPO.make_config(args, output_dir)


def train_wrpo(
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
    """WRPO `model` on parquet WRPO rows with `WRPOConfig` fields `args`; returns `output_dir`.

    `peft`: peft.LoraConfig fields (+ `merge`) for LoRA; `select_checkpoint`: `{metric, last}` to keep the
    best of the last checkpoints on the held-out rows of `eval_files`.
    """
    return train_from_files(
        WRPO, model, train_files, output_dir, args,
        eval_files=eval_files, ref_model=ref_model, peft=peft, select_checkpoint=select_checkpoint,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fusechat3.training.wrpo --config FILE [--set key=value ...]`."""
    return main_for(WRPO, argv)


if __name__ == "__main__":
    sys.exit(main())
