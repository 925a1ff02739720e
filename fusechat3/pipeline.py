"""The stages of an implicit-fusion run, in order, and `run_all` that runs them.

Each stage reads the run directory and writes its own folder in it; a finished stage is a
no-op, so `fusechat3 run` after a crash resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fusechat3.run import Run, log


def _prompts(run: Run) -> None:
    from fusechat3.sampling.stage import run_prompts

    run_prompts(run)


def _sample(run: Run) -> None:
    from fusechat3.sampling.stage import run_sample

    run_sample(run)


def _score(run: Run) -> None:
    from fusechat3.scoring.stage import run_score

    run_score(run)


def _build(run: Run) -> None:
    from fusechat3.building.stage import run_build

    run_build(run)


def _sft(run: Run) -> None:
    from fusechat3.training.stage import run_sft

    run_sft(run)


def _dpo(run: Run) -> None:
    from fusechat3.training.stage import run_dpo

    run_dpo(run)


def _controls(run: Run) -> None:
    from fusechat3.training.stage import run_controls

    run_controls(run)


def _eval(run: Run) -> None:
    from fusechat3.evaluation.stage import run_eval

    run_eval(run)


STAGES: dict[str, Callable[[Run], None]] = {
    "prompts": _prompts,
    "sample": _sample,
    "score": _score,
    "build": _build,
    "sft": _sft,
    "dpo": _dpo,
    "controls": _controls,
    "eval": _eval,
}


def run_all(run: Run, start: str | None = None, stop: str | None = None) -> None:
    names = list(STAGES)
    lo = names.index(start) if start else 0
    hi = names.index(stop) + 1 if stop else len(names)
    t0 = time.time()
    for name in names[lo:hi]:
        if name == "eval" and run.recipe.eval is None:
            continue
        log(f"stage {name}")
        STAGES[name](run)
    log(f"run {run.recipe.name}: stages {names[lo]}..{names[hi - 1]} done in {time.time() - t0:.0f}s -> {run.dir.root}")
