"""Supervised fine-tuning of the target on the selected best responses, with TRL's SFTTrainer.

Each SFT row `{"messages": [..., {"role": "assistant", ...}]}` becomes TRL's conversational
prompt-completion form (prompt = every message but the last, completion = the last), so TRL
masks the prompt and the loss falls on the response only with any chat template, also
templates without `{% generation %}` markers such as Llama-3.1's.

LoRA (`peft:`, see `lora`), resuming (`sft.resume_from_checkpoint`) and the paper's checkpoint
choice (`select_checkpoint:`, by eval loss on `eval_files`, see `checkpoints`) work for every method.

On a cluster:

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m fusechat3.training.sft \\
        --config recipes/fusechat3/llama-3.1-8b/sft.yaml [--set sft.learning_rate=2e-6 ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fusechat3.training.data import clean_messages, convert_rows, load_tokenizer, message_problem, report_trl_drops
from fusechat3.training.launch import Method, main_for, train_from_files

SFT_COLUMNS = ("messages",)  # the TRL column of an SFT row; the analysis columns are not read
_TRL_COLUMNS = ("prompt", "completion")
# What SFTTrainer.evaluate() reports that can choose a checkpoint (select_checkpoint.metric).
SFT_METRICS = ("eval_loss", "eval_mean_token_accuracy")


# --------------------------------------------------------------------------- rows


def conversation_problem(messages: Any) -> str:
    """Why an SFT conversation cannot be trained on ('' if it can)."""
    if reason := message_problem(messages, "messages"):
        return reason
    if messages[-1]["role"] != "assistant":
        return "last message is not the assistant's"
    if len(messages) < 2:
        return "no prompt before the response"
    if not messages[-1]["content"].strip():
        return "empty response"
    return ""


def sft_row(row: dict) -> dict:
    """One SFT row in TRL's prompt-completion form, with `skip` = why it cannot be trained on ('' if it can)."""
    if reason := conversation_problem(row["messages"]):
        return {"prompt": [], "completion": [], "skip": reason}
    messages = clean_messages(row["messages"])
    return {"prompt": messages[:-1], "completion": messages[-1:], "skip": ""}


# --------------------------------------------------------------------------- the trainer


def build_sft_trainer(
    model: str, train_dataset: Any, config: Any, eval_dataset: Any | None = None, *, peft_config: Any = None
) -> Any:
    """A ready `trl.SFTTrainer` on datasets that have a `messages` column (rows are checked and converted).

    `peft_config`: a peft.LoraConfig to train a LoRA adapter instead of every weight.
    """
    from trl import SFTTrainer

    tokenizer = load_tokenizer(model, config)  # first: a wrong model path fails before any data work
    train = convert_rows(train_dataset, sft_row, _TRL_COLUMNS, "sft train")
    evals = convert_rows(eval_dataset, sft_row, _TRL_COLUMNS, "sft eval") if eval_dataset is not None else None
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    report_trl_drops("sft train", len(train), trainer, packing=config.packing)
    return trainer


def _config_cls() -> type:
    from trl import SFTConfig

    return SFTConfig


# --------------------------------------------------------------------------- the method

SFT = Method(
    section="sft",
    label="SFT",
    columns=SFT_COLUMNS,
    config_cls=_config_cls,
    metrics=SFT_METRICS,
    build_trainer=build_sft_trainer,
    description="SFT of a target model with TRL (FuseChat-3.0).",
)


def sft_config(args: dict, output_dir: str) -> Any:
    """A `trl.SFTConfig` from the `sft:` fields; a RecipeError naming a bad key and the closest valid one."""
    return SFT.make_config(args, output_dir)


def train_sft(
    model: str,
    train_files: list[str],
    output_dir: str,
    args: dict,
    *,
    eval_files: list[str] | None = None,
    peft: dict | None = None,
    select_checkpoint: Any = None,
) -> str:
    """SFT `model` on parquet SFT rows with TRL `SFTConfig` fields `args`; returns `output_dir`, where it is saved.

    `peft`: peft.LoraConfig fields (+ `merge`) for LoRA; `select_checkpoint`: `{metric, last}` to keep the
    best of the last checkpoints on `eval_files`.
    """
    return train_from_files(
        SFT, model, train_files, output_dir, args, eval_files=eval_files, peft=peft, select_checkpoint=select_checkpoint
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fusechat3.training.sft --config FILE [--set key=value ...]`."""
    return main_for(SFT, argv)


if __name__ == "__main__":
    sys.exit(main())
