"""Checkpoints: finding a run's `checkpoint-<step>` folders, checking `resume_from_checkpoint`
before anything is loaded, and the paper's checkpoint choice (`select_checkpoint:`): after
training, the last `last` checkpoints are evaluated on held-out data and the better one becomes
the final model (`<output_dir>/checkpoint_choice.json` records which).

Importing this module is light (no torch, no TRL): the recipe's training sections use
`SelectCheckpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from fusechat3.config import Section, validate
from fusechat3.errors import RecipeError

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' folder name for the checkpoint of a step


def checkpoints(output_dir: str) -> list[tuple[int, Path]]:
    """The `checkpoint-<step>` folders of `output_dir` as (step, path), oldest first ([] if there are none)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def check_resume(value: Any, output_dir: str, where: str) -> None:
    """Check `resume_from_checkpoint` (true = the last checkpoint of output_dir, or a folder) before any loading.

    transformers raises only when training starts, after the model and data are loaded.
    """
    if value is None or value is False:
        return
    key = f"{where}.resume_from_checkpoint"
    if value is True:
        if not checkpoints(output_dir):
            raise RecipeError(
                f"{key}: true, but {output_dir} has no checkpoint-<step> folder to resume from; "
                "train with save_strategy: steps first, or remove the key"
            )
    elif isinstance(value, str):
        if not Path(value).is_dir():
            raise RecipeError(
                f"{key}: {value!r} is not a folder; give a checkpoint-<step> folder, or true for the last"
            )
    else:
        raise RecipeError(f"{key}: must be true or the path of a checkpoint-<step> folder, got {value!r}")


class SelectCheckpoint(Section):
    """The paper's checkpoint choice: evaluate the `last` checkpoints, keep the best by `metric`.

    `metric` is a key of `Trainer.evaluate()`'s result (`eval_loss`; for DPO and WRPO also
    `eval_rewards/accuracies`, the share of held-out pairs whose chosen reward is higher); the
    `eval_` prefix may be left out. A metric whose name ends in `loss` is better lower, any other
    higher, as in transformers, unless `greater_is_better` says otherwise.
    """

    metric: str = "eval_loss"
    last: int = Field(2, ge=1)  # how many of the last checkpoints compete (the paper: 2)
    greater_is_better: bool | None = None  # null: from the metric's name

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if not value:
            raise ValueError("must be a metric name, e.g. eval_loss or eval_rewards/accuracies")
        return value if value.startswith("eval_") else f"eval_{value}"  # evaluate() prefixes its metrics

    @model_validator(mode="after")
    def _direction(self) -> SelectCheckpoint:
        if self.greater_is_better is None:
            self.greater_is_better = not self.metric.endswith("loss")
        return self


def parse_select_checkpoint(raw: Any, where: str = "select_checkpoint") -> SelectCheckpoint | None:
    """`select_checkpoint` as given (a mapping, a SelectCheckpoint or None), validated; one RecipeError line."""
    if raw is None or isinstance(raw, SelectCheckpoint):
        return raw
    return validate(SelectCheckpoint, raw, where=where)


def check_select(
    select: SelectCheckpoint, config: Any, has_eval: bool, where: str, metrics: Sequence[str] | None = None
) -> None:
    """Raise a RecipeError if the TRL config cannot give `select` its candidates (before any model is loaded)."""
    if not has_eval:
        raise RecipeError(
            "select_checkpoint: needs held-out data to compare the checkpoints; set eval_files (or eval_split with "
            "dataset), or remove select_checkpoint"
        )
    strategy = getattr(config.save_strategy, "value", config.save_strategy)  # transformers' str enum
    if strategy not in ("steps", "epoch"):
        raise RecipeError(
            f"select_checkpoint: needs checkpoints to choose from: {where}.save_strategy: steps with "
            f"{where}.save_steps (the paper: 100), or epoch; got save_strategy: {strategy}"
        )
    if config.save_total_limit is not None and config.save_total_limit < select.last:
        raise RecipeError(
            f"select_checkpoint.last is {select.last} but {where}.save_total_limit is {config.save_total_limit}: "
            f"the candidates would be deleted; set save_total_limit to {select.last} or more"
        )
    if config.load_best_model_at_end:
        raise RecipeError(
            f"select_checkpoint and {where}.load_best_model_at_end both choose the final model; keep one of them"
        )
    if metrics is not None and select.metric not in metrics:
        raise RecipeError(
            f"select_checkpoint.metric: {select.metric!r} is not a metric of this trainer; use one of {list(metrics)}"
        )


def load_checkpoint_weights(trainer: Any, path: Path) -> None:
    """Load the weights (or the LoRA adapter) of checkpoint `path` into the trainer's model, in place."""
    # Trainer._load_best_model is private, but it is the one transformers routine that loads a
    # checkpoint into an already trained model under every backend (plain, DeepSpeed ZeRO-3,
    # FSDP, PEFT adapters); `load_best_model_at_end` uses it the same way.
    trainer.state.best_model_checkpoint = str(path)
    trainer._load_best_model()


def choose_checkpoint(trainer: Any, select: SelectCheckpoint) -> dict:
    """Evaluate the last `select.last` checkpoints, load the best into the model, record the choice.

    The paper saves every 100 steps and keeps the better of the last two. Checkpoints of a
    later step than the trainer reached (left by an earlier run in the same folder) are not
    candidates. Returns the record written to `<output_dir>/checkpoint_choice.json`; on a tie
    the later checkpoint wins. NaN is the worst value.
    """
    output_dir = Path(trainer.args.output_dir)
    found = checkpoints(str(output_dir))
    step = trainer.state.global_step
    stale = [p.name for s, p in found if step and s > step]
    if stale:
        logger.warning("select_checkpoint: %s are from an earlier run (after step %d), not candidates", stale, step)
    candidates = [(s, p) for s, p in found if not (step and s > step)][-select.last :]
    record: dict = {"metric": select.metric, "greater_is_better": select.greater_is_better, "candidates": []}
    if not candidates:
        logger.warning("select_checkpoint: no checkpoint in %s; the final model is the last state", output_dir)
        record["chosen"] = None
        _write_choice(trainer, output_dir, record)
        return record

    worst = -math.inf if select.greater_is_better else math.inf
    for cand_step, path in candidates:
        load_checkpoint_weights(trainer, path)
        metrics = trainer.evaluate()
        if select.metric not in metrics:
            raise RecipeError(
                f"select_checkpoint.metric: {select.metric!r} is not among the evaluation's metrics "
                f"{sorted(metrics)}; the checkpoints stay in {output_dir}"
            )
        value = float(metrics[select.metric])
        record["candidates"].append(
            {"checkpoint": path.name, "step": cand_step, "value": value if math.isfinite(value) else None}
        )
    sign = 1 if select.greater_is_better else -1
    scores = [sign * (c["value"] if c["value"] is not None else worst) for c in record["candidates"]]
    best = max(range(len(scores)), key=lambda i: (scores[i], i))  # ties: the later checkpoint
    if best != len(candidates) - 1:  # the model holds the last candidate evaluated
        load_checkpoint_weights(trainer, candidates[best][1])
    chosen = record["candidates"][best]
    record["chosen"] = chosen["checkpoint"]
    trainer.state.best_model_checkpoint = str(candidates[best][1])
    trainer.state.best_metric = chosen["value"]
    _write_choice(trainer, output_dir, record)
    if trainer.is_world_process_zero():
        others = ", ".join(f"{c['checkpoint']} {c['value']}" for c in record["candidates"] if c is not chosen)
        print(f"checkpoint choice: {chosen['checkpoint']} ({select.metric} {chosen['value']}) over {others or '-'}")
    return record


def _write_choice(trainer: Any, output_dir: Path, record: dict) -> None:
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / "checkpoint_choice.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(output_dir / "checkpoint_choice.json")
