"""What the preference methods (DPO, WRPO) share: the row checks of a preference pair, the reference
model, and the builder of a ready preference trainer (TRL's `DPOTrainer` or a subclass such as
`WRPOTrainer`) whose rows are checked and converted first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fusechat3.training.data import clean_messages, convert_rows, load_tokenizer, message_problem, report_trl_drops

PAIR_COLUMNS = ("prompt", "chosen", "rejected")  # TRL's columns of a preference row
WRPO_COLUMNS = (*PAIR_COLUMNS, "source_chosen")  # a WRPO row: the preference columns plus the source's response


def pair_problem(row: dict) -> str:
    """Why a preference row cannot be trained on ('' if it can)."""
    for column in PAIR_COLUMNS:
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


def load_ref_model(path: str, config: Any) -> Any:
    """The reference model at `path`, loaded the way TRL loads the policy (same `model_init_kwargs`)."""
    from trl.trainer.utils import create_model_from_path

    kwargs = dict(config.model_init_kwargs) if isinstance(config.model_init_kwargs, dict) else {}
    kwargs.setdefault("trust_remote_code", config.trust_remote_code)
    # As TRL does for the policy: under DDP / DeepSpeed each process holds the model, no device map.
    if config.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    return create_model_from_path(path, **kwargs)


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
    """A ready preference trainer (`DPOTrainer` or a subclass) whose rows `row` checks and converts first.

    `peft_config`: a peft.LoraConfig to train a LoRA adapter; without `ref_model` the reference is
    then the base model with the adapter turned off (TRL's way).
    """
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
