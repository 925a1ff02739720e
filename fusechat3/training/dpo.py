"""Preference training of the SFT'd target on the built pairs, with TRL's DPOTrainer.

FuseChat-3.0 trains the Llama targets with length-normalized DPO, which TRL has as
`loss_type: [sigmoid_norm]`: loss = -log σ(β/|y_w|·log(πθ/πref)(y_w|x) − β/|y_l|·log(πθ/πref)(y_l|x)).
The rows are already TRL's conversational preference form (`prompt`, `chosen`, `rejected`);
only those columns are read. Without `ref_model` the reference is the starting model
(with `precompute_ref_log_probs: true` its log-probs are computed once, before training).
LoRA (`peft:`), resuming (`dpo.resume_from_checkpoint`) and the paper's checkpoint choice
(`select_checkpoint:`, by eval loss or reward accuracy on held-out pairs) are described in `common`.

On a cluster:

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m fusechat3.training.dpo \\
        --config recipes/fusechat3/llama-3.1-8b/dpo.yaml [--set dpo.beta=5 ...]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from fusechat3.training.common import (
    Method,
    TrainingOptions,
    build_trl_config,
    check_trl_args,
    clean_messages,
    convert_rows,
    load_tokenizer,
    main_for,
    message_problem,
    report_trl_drops,
    train_and_save,
    train_from_files,
    training_options,
)

DPO_COLUMNS = ("prompt", "chosen", "rejected")  # TRL's columns of a DPO row; the analysis columns are not read
# What DPOTrainer.evaluate() reports that can choose a checkpoint (select_checkpoint.metric):
# rewards/accuracies is the share of held-out pairs whose chosen response gets the higher implicit reward.
DPO_METRICS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")


def dpo_config(args: dict, output_dir: str) -> Any:
    """A `trl.DPOConfig` from the recipe's `dpo:` fields; a RecipeError naming a bad key and the closest valid one."""
    from trl import DPOConfig

    check_trl_args(args, DPOConfig, "dpo")
    return build_trl_config(DPOConfig, args, output_dir, "dpo")


def pair_problem(row: dict) -> str:
    """Why a preference row cannot be trained on ('' if it can)."""
    for column in DPO_COLUMNS:
        if reason := message_problem(row[column], column):
            return reason
    for side in ("chosen", "rejected"):
        if row[side][-1]["role"] != "assistant":
            return f"{side} does not end with an assistant message"
        if not row[side][-1]["content"].strip():
            return f"empty {side} response"
    if clean_messages(row["chosen"]) == clean_messages(row["rejected"]):
        return "chosen equals rejected (no preference to learn)"
    return ""


def dpo_row(row: dict) -> dict:
    """One preference row with only role/content messages, and `skip` = why it cannot be trained on ('')."""
    if reason := pair_problem(row):
        return {"prompt": [], "chosen": [], "rejected": [], "skip": reason}
    return {column: clean_messages(row[column]) for column in DPO_COLUMNS} | {"skip": ""}


def load_ref_model(path: str, config: Any) -> Any:
    """The reference model at `path`, loaded the way TRL loads the policy (same `model_init_kwargs`)."""
    from trl.trainer.utils import create_model_from_path

    kwargs = dict(config.model_init_kwargs) if isinstance(config.model_init_kwargs, dict) else {}
    kwargs.setdefault("trust_remote_code", config.trust_remote_code)
    # As TRL does for the policy: under DDP / DeepSpeed each process holds the model, no device map.
    if config.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    return create_model_from_path(path, **kwargs)


def build_dpo_trainer(
    model: str,
    train_dataset: Any,
    config: Any,
    *,
    ref_model: str | None = None,
    eval_dataset: Any | None = None,
    peft_config: Any = None,
) -> Any:
    """A ready `trl.DPOTrainer` on datasets with `prompt`/`chosen`/`rejected` columns (rows checked first).

    `peft_config`: a peft.LoraConfig to train a LoRA adapter; without `ref_model` the reference is
    then the base model with the adapter turned off (TRL's way).
    """
    from trl import DPOTrainer

    return build_preference_trainer(
        DPOTrainer, dpo_row, DPO_COLUMNS, "dpo", model, train_dataset, config,
        ref_model=ref_model, eval_dataset=eval_dataset, peft_config=peft_config,
    )  # fmt: skip


def build_preference_trainer(
    trainer_cls: type,
    row: Callable[[dict], dict],
    columns: Sequence[str],
    where: str,
    model: str,
    train_dataset: Any,
    config: Any,
    *,
    ref_model: str | None = None,
    eval_dataset: Any | None = None,
    peft_config: Any = None,
) -> Any:
    """A ready preference trainer (`DPOTrainer` or a subclass) whose rows `row` checks and converts first."""
    tokenizer = load_tokenizer(model, config)  # first: a wrong model path fails before any data work
    train = convert_rows(train_dataset, row, columns, f"{where} train")
    evals = convert_rows(eval_dataset, row, columns, f"{where} eval") if eval_dataset is not None else None
    trainer = trainer_cls(
        model=model,
        ref_model=load_ref_model(ref_model, config) if ref_model else None,
        args=config,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    report_trl_drops(f"{where} train", len(train), trainer)
    return trainer


def run_dpo(
    model: str,
    train_dataset: Any,
    config: Any,
    *,
    ref_model: str | None = None,
    eval_dataset: Any | None = None,
    peft: dict | None = None,
    select_checkpoint: dict | None = None,
) -> str:
    """Train with a built `DPOConfig` on loaded datasets and save the model + tokenizer to `config.output_dir`.

    `peft`: the config's `peft:` mapping (LoRA); `select_checkpoint`: its `select_checkpoint:` mapping.
    """
    options = dpo_options(config, peft, select_checkpoint, has_eval=eval_dataset is not None)
    trainer = build_dpo_trainer(
        model, train_dataset, config, ref_model=ref_model, eval_dataset=eval_dataset, peft_config=options.peft_config
    )
    return train_and_save(trainer, options)


def dpo_options(config: Any, peft: dict | None, select_checkpoint: dict | None, has_eval: bool) -> TrainingOptions:
    """The checked LoRA and checkpoint-choice options of a DPO run (`common.TrainingOptions`)."""
    return training_options(
        config, peft=peft, select_checkpoint=select_checkpoint, has_eval=has_eval, where="dpo", metrics=DPO_METRICS
    )


def train_dpo(
    model: str,
    train_files: list[str],
    output_dir: str,
    args: dict,
    *,
    ref_model: str | None = None,
    eval_files: list[str] | None = None,
    peft: dict | None = None,
    select_checkpoint: dict | None = None,
) -> str:
    """DPO `model` on parquet preference rows with TRL `DPOConfig` fields `args`; returns `output_dir`.

    `peft`: peft.LoraConfig fields (+ `merge`) for LoRA; `select_checkpoint`: `{metric, last}` to keep the
    best of the last checkpoints on the held-out pairs of `eval_files` (see `common`).
    """
    return train_from_files(
        DPO, model, train_files, output_dir, args,
        eval_files=eval_files, ref_model=ref_model, peft=peft, select_checkpoint=select_checkpoint,
    )  # fmt: skip


def _config_cls() -> type:
    from trl import DPOConfig

    return DPOConfig


DPO = Method(
    "dpo", "DPO", DPO_COLUMNS, _config_cls, dpo_config, dpo_options, run_dpo,
    "DPO of a target model with TRL (FuseChat-3.0).", ref_model=True,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fusechat3.training.dpo --config FILE [--set key=value ...]`."""
    return main_for(DPO, argv)


if __name__ == "__main__":
    sys.exit(main())
