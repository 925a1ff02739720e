"""How a training run is configured, in one place:

- the TRL section (`sft:`, `dpo:`, `wrpo:`): TRL's own config fields (SFTConfig, DPOConfig, WRPOConfig),
  checked against and built with TRL's class (`check_trl_args`, `build_trl_config`), plus what a machine
  without CUDA needs (`device_defaults`);
- `TrainSection`: a training stage of a run recipe: the TRL fields and, beside them, the options a training
  config file has at its top level (`peft`, `select_checkpoint`, `eval_files`, `ref_model`);
- the training config file (`python -m fusechat3.training.<method> --config FILE`): where the model and data
  are and where the result goes, the options, and the TRL section (`load_run_config`).

Importing this module is light: TRL is imported only to check or build a TRL config.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, create_model, field_validator, model_validator

from fusechat3.config import KeyProblem, Section, parse_yaml, read_yaml, validate
from fusechat3.errors import RecipeError
from fusechat3.training.checkpoints import SelectCheckpoint, check_resume

logger = logging.getLogger(__name__)


def closest(key: str, valid: Sequence[str], fallback: str = "see the TRL docs for the valid fields") -> str:
    """`did you mean 'x'?` for the closest of `valid`, else `fallback` (TRL and peft field names)."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else fallback


# --------------------------------------------------------------------------- the TRL section


def check_trl_args(args: dict, config_cls: type, where: str) -> None:
    """Raise a RecipeError naming the first key of `args` that is not a field of `config_cls`."""
    if not isinstance(args, dict):
        raise RecipeError(f"{where}: must be a mapping of {config_cls.__name__} fields, got {type(args).__name__}")
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    for key in args:
        if key == "output_dir":
            raise RecipeError(f"{where}.output_dir: set the output directory once, outside the {where} section")
        if key not in names:
            raise RecipeError(f"{where}.{key}: not a {config_cls.__name__} field; {closest(str(key), names)}")


def device_defaults(args: dict, has_cuda: bool) -> dict:
    """`args` with what a machine without CUDA needs: CPU, fp32, a non-fused optimizer, no trackers.

    TRL defaults to bf16 and transformers to the fused AdamW; neither is what a CPU run
    wants (bf16 autocast is slow and less reproducible there). What the user set
    explicitly and cannot work is overridden with a warning; their other choices stay.
    """
    if has_cuda:
        return dict(args)
    out = dict(args)
    out["use_cpu"] = True
    for key in ("bf16", "fp16", "tf32"):
        if out.get(key):
            logger.warning("no CUDA device: %s=true is turned off, training runs on the CPU in float32", key)
            out[key] = False
    out["bf16"] = out["fp16"] = False  # explicit: TRL turns bf16 on when it is left unset
    optim = str(out.get("optim", ""))
    if "fused" in optim:
        logger.warning("no CUDA device: optim=%s is replaced by adamw_torch", optim)
    if not optim or "fused" in optim:
        out["optim"] = "adamw_torch"
    out.setdefault("report_to", "none")
    out.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; it only warns on CPU
    return out


def build_trl_config(config_cls: type, args: dict, output_dir: str, where: str) -> Any:
    """The TRL config from `args` and the machine's defaults; one RecipeError line naming `where` if bad."""
    import torch

    from fusechat3.logs import is_terminal

    check_trl_args(args, config_cls, where)
    full = device_defaults(args, torch.cuda.is_available())
    if not is_terminal():  # a log file: the trainer's loss lines (logging_steps) and no bar redrawn per step
        full.setdefault("disable_tqdm", True)
    try:
        config = config_cls(output_dir=str(output_dir), **full)
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split())
        raise RecipeError(f"{where}: {config_cls.__name__} rejects these settings: {message}") from None
    check_resume(config.resume_from_checkpoint, str(output_dir), where)
    return config


# --------------------------------------------------------------------------- a run's training stage


class TrainSection(BaseModel):
    """A training stage of a run recipe (`sft:`, `dpo:`, `wrpo:`): TRL config fields, passed to TRL's class
    (SFTConfig, DPOConfig, WRPOConfig) and checked by it when the stage is checked, and these keys of ours."""

    model_config = ConfigDict(extra="allow", strict=True)

    peft: dict | None = None  # peft.LoraConfig fields (+ merge): train a LoRA adapter (see training.lora)
    select_checkpoint: SelectCheckpoint | None = None  # keep the best of the last checkpoints on held-out rows
    # Held-out rows for evaluation and the checkpoint choice; null: the build's held-out set of this stage's
    # rows where the build wrote one (building.heldout_fraction > 0).
    eval_files: list[str] | None = None
    ref_model: str | None = None  # preference stages: the reference model (null: the model trained from)

    @property
    def trl(self) -> dict:
        """The TRL config fields, as written."""
        return dict(self.model_extra or {})


# --------------------------------------------------------------------------- a training config file


class TrainingFile(Section):
    """A training config file: the model, the data, where the result goes, the options; the TRL section is
    the field named after the method (`sft:`, `dpo:`, `wrpo:`, added per method by `file_model`)."""

    section: ClassVar[str] = ""  # the name of the TRL section field (set by `file_model`)

    model: str  # local path, Hub id or toyworld:<asset>
    output_dir: str
    train_files: list[str] | None = None  # parquet files or globs (exactly one of train_files, dataset)
    dataset: str | None = None  # a Hub dataset id or a local dataset folder
    split: str = "train"
    eval_files: list[str] | None = None  # held-out parquet files (evaluation, checkpoint choice)
    eval_split: str | None = None  # held-out split of `dataset`
    peft: dict | None = None  # peft.LoraConfig fields (+ merge)
    select_checkpoint: SelectCheckpoint | None = None

    @field_validator("train_files", "eval_files", mode="before")
    @classmethod
    def _one_file(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> TrainingFile:
        if self.train_files is None and self.dataset is None:
            raise KeyProblem(
                "train_files", "is missing: set train_files (parquet files or globs) or dataset (a Hub id or folder)"
            )
        if self.train_files is not None and self.dataset is not None:
            raise KeyProblem("train_files", "and 'dataset' are both set: keep one of them")
        return self

    @property
    def has_eval(self) -> bool:
        """Whether the config names held-out data (eval_files, or eval_split of its dataset)."""
        return bool(self.eval_files) or (self.dataset is not None and self.eval_split is not None)

    @property
    def args(self) -> dict:
        """The TRL section's fields."""
        return dict(getattr(self, self.section))


@functools.cache
def file_model(section: str, ref_model: bool) -> type[TrainingFile]:
    """The training-config-file model of one method: `TrainingFile` plus its TRL section (and `ref_model`)."""
    fields: dict[str, Any] = {section: (dict, {})}
    if ref_model:
        fields["ref_model"] = (str | None, None)  # the reference model (null: the model trained from)
    model = create_model(f"{section.upper()}TrainingFile", __base__=TrainingFile, **fields)
    model.section = section
    return model


def load_run_config(
    path: str, section: str, config_cls: type, overrides: Sequence[str] = (), extra_keys: Sequence[str] = ()
) -> TrainingFile:
    """Read a training YAML (`model`, `train_files` or `dataset`, `output_dir`, `<section>:` TRL fields, options).

    The `<section>` keys are checked against the TRL config class `config_cls` and the `peft:` keys
    against peft.LoraConfig here, so that a typo is one line naming the file before anything loads.
    """
    from fusechat3.training.lora import check_peft

    raw = read_yaml(path, overrides, what="config")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: must be a mapping with model:, train_files: (or dataset:), output_dir: and {section}:"
        )
    config = validate(file_model(section, "ref_model" in extra_keys), raw, source=str(path))
    try:
        check_trl_args(config.args, config_cls, section)
        if config.peft is not None:
            check_peft(config.peft)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
    return config


def is_training_config(path: str, section: str) -> bool:
    """Whether the YAML at `path` is a training config of `section` (top-level `model:` and `<section>:`, no
    `sources:`) rather than a run recipe."""
    return is_config_file(path, lambda raw: "model" in raw and section in raw)


def is_config_file(path: str, kind: Callable[[dict], bool]) -> bool:
    """Whether the YAML at `path` is a mapping without `sources:` (not a run recipe) that `kind` accepts. False
    when it cannot be read: the recipe loader then names the problem."""
    try:
        raw = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecipeError):
        return False
    return isinstance(raw, dict) and "sources" not in raw and kind(raw)
