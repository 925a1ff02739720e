"""What every training method's run shares: the checked options (LoRA, checkpoint choice), train then
save, and the entry point `python -m fusechat3.training.<method> --config FILE [--set key=value ...]`
(also what `accelerate launch -m ...` runs on every process, and what a run's training stage calls).

A `Method` (SFT, DPO, WRPO: see sft.py, dpo.py, wrpo.py) says what differs: its YAML section and TRL
config class, the dataset columns, the metrics its evaluation reports, and how its trainer is built.
Everything cheap is checked first, so that a typo costs no model or data loading.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusechat3.errors import UserError
from fusechat3.recipe import resolve_model
from fusechat3.training.checkpoints import SelectCheckpoint, check_select, choose_checkpoint, parse_select_checkpoint
from fusechat3.training.config import build_trl_config, load_run_config
from fusechat3.training.data import checked_files, load_named_dataset, load_parquet
from fusechat3.training.lora import MERGE_KEY, is_peft_model, lora_config, merge_adapter

# --------------------------------------------------------------------------- options


@dataclasses.dataclass
class TrainingOptions:
    """The options of a training run outside its TRL section, checked: LoRA and the checkpoint choice."""

    peft_config: Any = None  # a peft.LoraConfig for the TRL trainer's `peft_config`, or None (full fine-tuning)
    merge_adapter: bool = True
    select: SelectCheckpoint | None = None


def training_options(
    config: Any,
    *,
    peft: dict | None = None,
    select_checkpoint: dict | SelectCheckpoint | None = None,
    has_eval: bool = False,
    where: str = "sft",
    metrics: Sequence[str] | None = None,
) -> TrainingOptions:
    """Check the `peft:` and `select_checkpoint:` options against the built TRL `config` (cheap: no model loaded).

    `metrics`: the evaluation metrics the trainer reports, to reject a misspelt
    `select_checkpoint.metric` now rather than after training (None: not checked).
    """
    select = parse_select_checkpoint(select_checkpoint)
    if select is not None:
        check_select(select, config, has_eval, where, metrics)
    if peft is None:
        return TrainingOptions(select=select)
    return TrainingOptions(peft_config=lora_config(peft), merge_adapter=bool(peft.get(MERGE_KEY, True)), select=select)


# --------------------------------------------------------------------------- train and save


def save_final(trainer: Any, output_dir: str, merge: bool = True) -> str:
    """Save the trained model and its tokenizer (with the chat template) where vLLM can load them.

    A LoRA model is saved merged into its base (the adapter also in `<output_dir>/adapter`),
    or, with `merge=False`, as the adapter alone in `output_dir`.
    """
    if is_peft_model(trainer.model) and merge:
        adapter_dir = str(Path(output_dir) / "adapter")
        trainer.save_model(adapter_dir)  # the adapter (gathered from the shards) + the tokenizer
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            merge_adapter(adapter_dir, output_dir, trainer.args)
            trainer.processing_class.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)  # gathers ZeRO-3 / FSDP shards; writes the processing class too
    trainer.save_state()  # trainer_state.json: the loss curve, for reports
    trainer.accelerator.wait_for_everyone()
    return str(output_dir)


def _log_lines_to_logging(trainer: Any) -> None:
    """Without a bar (`disable_tqdm`: a log file) transformers prints the loss lines to stdout; they go through
    logging instead (logger `fusechat3.training`), so they reach the stage's log file (`fusechat3.logs`)."""
    import logging

    from transformers import PrinterCallback, TrainerCallback

    class LogLines(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if state.is_local_process_zero and logs:
                logging.getLogger("fusechat3.training").info(f"step {state.global_step}: {logs}")

    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(LogLines())


def train_and_save(trainer: Any, options: TrainingOptions | None = None) -> str:
    """Train (resuming if the config says so), choose the checkpoint, save the final model; returns output_dir."""
    options = options or TrainingOptions()
    config = trainer.args
    _log_lines_to_logging(trainer)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if options.select is not None:
        choose_checkpoint(trainer, options.select)
    return save_final(trainer, config.output_dir, merge=options.merge_adapter)


# --------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
    """What differs between SFT, DPO and WRPO; the methods below and `main_for` do the rest."""

    section: str  # the YAML section of TRL fields, and the module name: sft, dpo, wrpo
    label: str  # for messages: SFT, DPO, WRPO
    columns: Sequence[str]  # the dataset columns the trainer reads
    config_cls: Callable[[], type]  # the TRL config class (a function: TRL is imported only when needed)
    metrics: Sequence[str]  # what its evaluate() reports that can choose a checkpoint
    # (model, train_dataset, config, *, eval_dataset, peft_config[, ref_model]) -> a ready trainer
    build_trainer: Callable[..., Any]
    description: str
    ref_model: bool = False  # takes a reference model (`ref_model` key)
    module: str = ""  # the module of `python -m fusechat3.training.<module>` ('': the section's name)

    def make_config(self, args: dict, output_dir: str) -> Any:
        """The checked TRL config from the section's fields; a RecipeError naming a bad key and the closest one."""
        return build_trl_config(self.config_cls(), args, output_dir, self.section)

    def options(self, config: Any, peft: dict | None, select_checkpoint: Any, has_eval: bool) -> TrainingOptions:
        """The checked LoRA and checkpoint-choice options of a run of this method."""
        return training_options(
            config,
            peft=peft,
            select_checkpoint=select_checkpoint,
            has_eval=has_eval,
            where=self.section,
            metrics=self.metrics,
        )

    def run(
        self,
        model: str,
        train_dataset: Any,
        config: Any,
        eval_dataset: Any | None = None,
        *,
        peft: dict | None = None,
        select_checkpoint: Any = None,
        ref_model: str | None = None,
    ) -> str:
        """Train with a built TRL config on loaded datasets; save the model + tokenizer to `config.output_dir`."""
        options = self.options(config, peft, select_checkpoint, has_eval=eval_dataset is not None)
        extra = {"ref_model": ref_model} if self.ref_model else {}
        trainer = self.build_trainer(
            model, train_dataset, config, eval_dataset=eval_dataset, peft_config=options.peft_config, **extra
        )
        return train_and_save(trainer, options)


def train_from_files(
    method: Method,
    model: str,
    train_files: list[str],
    output_dir: str,
    args: dict,
    *,
    eval_files: list[str] | None = None,
    peft: dict | None = None,
    select_checkpoint: Any = None,
    ref_model: str | None = None,
) -> str:
    """Train `model` with `method` on parquet files; cheap checks first, so a typo costs no model or data loading."""
    model = resolve_model(model)
    ref_model = resolve_model(ref_model) if ref_model else None
    config = method.make_config(args, output_dir)
    method.options(config, peft, select_checkpoint, bool(eval_files))
    train_paths = checked_files(train_files, method.columns, "train_files", method.label)
    eval_paths = checked_files(eval_files, method.columns, "eval_files", method.label) if eval_files else None
    with config.main_process_first(desc=f"loading {method.label} data"):
        train = load_parquet(train_paths, method.columns)
        evals = load_parquet(eval_paths, method.columns) if eval_paths else None
    return method.run(model, train, config, evals, peft=peft, select_checkpoint=select_checkpoint, ref_model=ref_model)


# --------------------------------------------------------------------------- the entry point


def parse_cli(argv: Sequence[str] | None, prog: str, description: str) -> argparse.Namespace:
    """The entry points' arguments: `--config FILE` and repeatable `--set key.path=value`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", required=True, help="training YAML (model, train_files or dataset, output_dir, ...)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, dotted for TRL fields (e.g. --set sft.learning_rate=1e-5); repeatable",
    )
    return parser.parse_args(argv)


def main_for(method: Method, argv: Sequence[str] | None) -> int:
    """`python -m fusechat3.training.<section> --config FILE [--set key=value ...]` for `method`.

    A user mistake is one line on stderr and exit code 2; any other error keeps its traceback.
    """
    ns = parse_cli(argv, f"python -m fusechat3.training.{method.module or method.section}", method.description)
    try:
        out = _train_from_config(method, ns.config, ns.overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved to {out}")
    return 0


def _train_from_config(method: Method, path: str, overrides: Sequence[str]) -> str:
    rc = load_run_config(path, method.section, method.config_cls(), overrides, ("ref_model",) * method.ref_model)
    options = {"peft": rc.peft, "select_checkpoint": rc.select_checkpoint}
    if method.ref_model:
        options["ref_model"] = rc.ref_model
    if rc.train_files is not None:
        return train_from_files(
            method, rc.model, rc.train_files, rc.output_dir, rc.args, eval_files=rc.eval_files, **options
        )
    config = method.make_config(rc.args, rc.output_dir)
    method.options(config, rc.peft, rc.select_checkpoint, rc.has_eval)  # before any data is loaded
    with config.main_process_first(desc=f"loading {method.label} data"):
        train = load_named_dataset(rc.dataset, rc.split, method.columns, method.label)
        evals = load_named_dataset(rc.dataset, rc.eval_split, method.columns, method.label) if rc.eval_split else None
    model = resolve_model(rc.model)
    options["ref_model"] = resolve_model(options["ref_model"]) if options.get("ref_model") else None
    return method.run(model, train, config, evals, **options)
