"""The stages of a run: what each one declares about itself, their order, and `run_all`.

A stage declares itself in its own module with a `StageDef`: its name and help line, the stages
it reads, the recipe settings its key depends on, what it writes (named outputs), its optional
per-source parts (`sample/<source>`), the models it makes for evaluation, and its own
command-line options. Everything else is derived here and in `run.Run` from those
declarations: the run key of each stage, the order of `fusechat3 run`, the CLI subcommands and
the paths of the outputs. To add a stage, write its module and put one line in `ORDER`.

Each stage reads the run directory and writes its own folder in it; a finished stage is a no-op,
so `fusechat3 run` after a crash resumes where it stopped. Importing this module and every stage
module is light (no torch, TRL or vLLM): `fusechat3 --help` lists the stages from here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusechat3.errors import StoreError, UserError

if TYPE_CHECKING:
    from fusechat3.recipe import Recipe
    from fusechat3.run import Run

# The stages of a run, in order: "module:ATTRIBUTE" of each stage's `StageDef`.
ORDER = (
    "fusechat3.prompts:PROMPTS",
    "fusechat3.sampling.stage:SAMPLE",
    "fusechat3.scoring.stage:SCORE",
    "fusechat3.building.stage:BUILD",
    "fusechat3.training.stage:SFT",
    "fusechat3.training.stage:DPO",
    "fusechat3.training.stage:WRPO",
    "fusechat3.training.stage:CONTROLS",
    "fusechat3.explicit.corpus:CORPUS",
    "fusechat3.explicit.represent_stage:REPRESENT",
    "fusechat3.explicit.teacher_stage:TEACHER",
    "fusechat3.training.stage:FUSE_TRAIN",
    "fusechat3.merging.stage:MERGE",
    "fusechat3.evaluation.stage:EVAL",
)


def _always(recipe: Recipe) -> bool:
    return True


def implicit(recipe: Recipe) -> bool:
    """Whether the recipe runs the implicit path (sample .. controls): it has a `scoring:` section."""
    return recipe.scoring is not None


def explicit(recipe: Recipe) -> bool:
    """Whether the recipe runs the explicit path (corpus .. fuse-train): it has an `explicit:` section."""
    return recipe.explicit is not None


IMPLICIT_OFF = "the recipe has no `scoring:` section (no implicit fusion)"
EXPLICIT_OFF = "the recipe has no `explicit:` section (no explicit fusion)"


@dataclass(frozen=True)
class StageDef:
    """One stage, as its module declares it."""

    name: str  # the stage's folder in the run directory and its `fusechat3 <name>` command
    help: str  # the command's help line
    run: Callable[..., Any]  # run(run: Run, **options): the stage's work (a no-op when it has finished)
    reads: tuple[str, ...] = ()  # the stages whose outputs it reads: their keys are part of its key
    # The recipe settings its key depends on: settings(run, part) -> JSON-able data.
    settings: Callable[[Run, str | None], Any] = lambda run, part: None
    # What it writes, by name: a path relative to the stage's folder (its part's folder for a parted
    # stage when a part is named), with `{...}` fields filled by `Run.output(..., **fields)`. "rows": its shards.
    outputs: Mapping[str, str] = field(default_factory=dict)
    # The stage's parts (one sub-stage per source: `sample/<source>`), or None for a single stage.
    parts: Callable[[Recipe], list[str]] | None = None
    enabled: Callable[[Recipe], bool] = _always  # whether `fusechat3 run` runs it for this recipe
    # The models it makes, for evaluation: {model name: part (None for a single stage)}; each is
    # found at its `model` output.
    models: Callable[[Recipe], dict[str, str | None]] | None = None
    # Adds the command's own options to its parser; their values are passed to `run` by name.
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Checks the stage's settings before a run starts anything (e.g. TRL fields), so a typo in the
    # last stage does not surface after hours of sampling: check(run) raises a UserError.
    check: Callable[[Run], None] | None = None
    # The module whose `main(argv)` trains from a training config file: `fusechat3 <name> config.yaml`.
    config_entry: str | None = None
    config_example: str = ""  # a training config of that kind, for the command's help
    # Whether a YAML mapping (not a run recipe) is a config for `config_entry`; None: a training config
    # (top-level `model:` and the stage's section).
    is_config: Callable[[dict], bool] | None = None
    # For a merge: the models each of its models is made from, {model: [input models]}; the scoreboard adds
    # MergeBench's normalized performance (the model's accuracy over its best input's, per domain).
    merged_from: Callable[[Recipe], dict[str, list[str]]] | None = None
    disabled_reason: str = ""  # what `fusechat3 run` says when it skips the stage


@functools.cache
def stages() -> dict[str, StageDef]:
    """Every stage by name, in run order."""
    out: dict[str, StageDef] = {}
    for entry in ORDER:
        module, attr = entry.split(":")
        stage = getattr(importlib.import_module(module), attr)
        if stage.name in out:
            raise RuntimeError(f"two stages are named {stage.name!r} in stages.ORDER")
        out[stage.name] = stage
    return out


def names() -> list[str]:
    return list(stages())


def get(name: str) -> StageDef:
    """The stage `name` (a part's name, `sample/<source>`, gives its stage)."""
    top = name.split("/")[0]
    try:
        return stages()[top]
    except KeyError:
        raise StoreError(f"no stage named {top!r}; the stages are {', '.join(stages())}") from None


def run_all(run: Run, start: str | None = None, stop: str | None = None) -> None:
    """Run the stages from `start` to `stop` (names; None: the first, the last) in order."""
    from fusechat3.logs import stage_log
    from fusechat3.run import log

    order = names()
    lo = order.index(start) if start else 0
    hi = order.index(stop) + 1 if stop else len(order)
    chosen = [stages()[n] for n in order[lo:hi]]
    for stage in chosen:  # every cheap check first: a bad setting of a late stage fails now
        if stage.check is not None and stage.enabled(run.recipe):
            stage.check(run)
    t0 = time.time()
    for stage in chosen:
        if not stage.enabled(run.recipe):
            log(f"stage {stage.name}: skipped ({stage.disabled_reason or 'off in this recipe'})")
            continue
        log(f"stage {stage.name}")
        with stage_log(run.dir.root / stage.name):
            stage.run(run)
    log(f"run {run.recipe.name}: stages {order[lo]}..{order[hi - 1]} done in {time.time() - t0:.0f}s -> {run.dir.root}")


def require_enabled(run: Run, stage: StageDef) -> None:
    """A stage run by its own command that the recipe turns off: one line saying how to turn it on."""
    if not stage.enabled(run.recipe):
        raise UserError(f"{run.recipe.path or 'recipe'}: stage {stage.name!r} is off: {stage.disabled_reason}")
