"""The stages of an implicit-fusion run, in order, and `run_all` that runs them.

Each stage reads the run directory and writes its own folder in it; a finished stage is a
no-op, so `fusechat3 run` after a crash resumes where it stopped.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

from fusechat3.run import Run, log

# name -> "module:function"; modules are imported only when their stage runs, so that
# `fusechat3 --help` stays light.
STAGES: dict[str, str] = {
    "prompts": "fusechat3.sampling.stage:run_prompts",
    "sample": "fusechat3.sampling.stage:run_sample",
    "score": "fusechat3.scoring.stage:run_score",
    "build": "fusechat3.building.stage:run_build",
    "sft": "fusechat3.training.stage:run_sft",
    "dpo": "fusechat3.training.stage:run_dpo",
    "controls": "fusechat3.training.stage:run_controls",
    "eval": "fusechat3.evaluation.stage:run_eval",
}


def stage_fn(name: str) -> Callable[[Run], None]:
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)


def run_all(run: Run, start: str | None = None, stop: str | None = None) -> None:
    names = list(STAGES)
    lo = names.index(start) if start else 0
    hi = names.index(stop) + 1 if stop else len(names)
    t0 = time.time()
    for name in names[lo:hi]:
        if name == "eval" and run.recipe.eval is None:
            continue
        log(f"stage {name}")
        stage_fn(name)(run)
    log(f"run {run.recipe.name}: stages {names[lo]}..{names[hi - 1]} done in {time.time() - t0:.0f}s -> {run.dir.root}")
