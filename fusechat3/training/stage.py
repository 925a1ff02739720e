"""The training stages of a run: `sft`, `dpo`, `wrpo` and `controls`. Each trains the target with
TRL in this process, with everything a training config file can say (TRL fields, `peft:` LoRA,
`select_checkpoint:`, `eval_files:`, `ref_model:`). On a cluster the same trainers run under
`accelerate launch -m fusechat3.training.sft|dpo|wrpo --config ...`.

- sft: the target on the build's SFT set -> `sft/model`
- dpo: the SFT model on the build's DPO set (e.g. the length-normalized `loss_type: [sigmoid_norm]`)
  -> `dpo/model`
- wrpo: the SFT model on the build's WRPO triplets (recipes with `wrpo:` and a `role: target` source)
  -> `wrpo/model`
- controls: for each control source, the target with the same SFT settings and the same number of
  optimizer steps as the fused SFT, on that one source's SFT rows -> `controls/<source>/model`.
  Fusion has to beat these, not only the untrained target.

Evaluation data: a stage's `eval_files`, else the build's held-out rows of its set where the build
wrote them (`building.heldout_fraction` > 0).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from fusechat3.building.stage import control_sources
from fusechat3.errors import StoreError, UserError
from fusechat3.recipe import as_dict, resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.stages import EXPLICIT_OFF, IMPLICIT_OFF, StageDef, explicit, implicit, require_enabled
from fusechat3.training.config import TrainSection


def _method(name: str) -> Any:
    """The training method (`launch.Method`) of module fusechat3.training.<name>: SFT, DPO or WRPO."""
    return getattr(importlib.import_module(f"fusechat3.training.{name}"), name.upper())


def _trl_args(run: Run, section: TrainSection) -> dict:
    return {"seed": run.recipe.seed, **section.trl}


def _eval_files(run: Run, section: TrainSection, data: str | None) -> list[str] | None:
    if section.eval_files is not None:
        return list(section.eval_files)
    if data is None:  # a set the build does not make (the explicit path's teachers): no held-out rows
        return None
    held = run.output("build", "heldout", set=data)
    return [str(held)] if held.is_file() else None


def _train(
    run: Run,
    stage_name: str,
    method: str,
    model: str,
    files: list[str],
    section: TrainSection,
    *,
    data: str | None,
    args: dict | None = None,
    part: str | None = None,
) -> None:
    name = f"{stage_name}/{part}" if part else stage_name
    stage = run.stage(name)
    out = run.output(stage_name, "model", part)
    if stage.done():
        log(f"{name}: done already")
        return
    t0 = time.time()
    if out.exists():  # a run killed mid-training: its partial output is not trusted
        shutil.rmtree(out)
    options: dict[str, Any] = {"peft": section.peft, "select_checkpoint": section.select_checkpoint}
    if method != "sft":
        options["ref_model"] = section.ref_model
    from fusechat3.training.launch import train_from_files

    train_from_files(
        _method(method),
        model,
        files,
        str(out),
        args if args is not None else _trl_args(run, section),
        eval_files=_eval_files(run, section, data),
        **options,
    )
    state = _trainer_state(out)
    secs = time.time() - t0
    summary = {
        "model_in": model,
        "rows_in": _rows(files),
        "steps": state.get("global_step"),
        "train_loss": _last_loss(state),
        "seconds": round(secs, 1),
    }
    stage.finish(summary)
    print_summary(name, [(k, v) for k, v in summary.items() if k != "seconds"], secs)


def _rows(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _trainer_state(model_dir: Path) -> dict:
    path = model_dir / "trainer_state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _last_loss(state: dict) -> float | None:
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    return round(losses[-1], 4) if losses else None


def model_dir(run: Run, stage: str, part: str | None = None) -> str:
    """The trained model of stage `stage`; one line saying which command makes it if it is not there."""
    path = run.output(stage, "model", part)
    if not (path / "config.json").is_file():
        raise StoreError(f"{path} has no trained model: run `{run.how(stage)}` first")
    return str(path)


def _data(run: Run, name: str, **fields: str) -> list[str]:
    return [str(run.existing("build", name, **fields))]


# --------------------------------------------------------------------------- the stages


def run_controls(run: Run) -> None:
    names = control_sources(run.recipe)
    if not names:
        log("controls: off in this recipe (controls.enabled: false)")
        return
    # Same budget as the fused SFT: its number of optimizer steps, whatever the row count.
    steps = _trainer_state(Path(model_dir(run, "sft"))).get("global_step")
    if not steps:
        raise StoreError(f"{run.output(SFT.name, 'model')} has no trainer_state.json: re-run `{run.how(SFT.name)}`")
    args = {k: v for k, v in _trl_args(run, run.recipe.sft).items() if k != "num_train_epochs"}
    args["max_steps"] = int(steps)
    jobs = [(name, _data(run, "control", source=name)) for name in names]
    for name, _ in jobs:
        if run.stage(f"{CONTROLS.name}/{name}").done():
            log(f"{CONTROLS.name}/{name}: done already")
    jobs = [job for job in jobs if not run.stage(f"{CONTROLS.name}/{job[0]}").done()]
    parallel = min(run.recipe.controls.parallel, len(jobs))
    if parallel <= 1:
        for name, files in jobs:
            _train_control(run, name, files, args)
        return
    _train_in_processes(run, jobs, args, parallel)


def _train_control(run: Run, source: str, files: list[str], args: dict) -> None:
    from fusechat3.logs import stage_log

    # The fused SFT's settings, LoRA included; no checkpoint choice (a control has no held-out set of its own).
    section = run.recipe.sft.model_copy(update={"select_checkpoint": None, "eval_files": None})
    model = resolve_model(run.recipe.target.model)
    with stage_log(run.dir.root / CONTROLS.name / source):  # each control's own log, whichever process trains it
        _train(run, CONTROLS.name, "sft", model, files, section, data="control", args=args, part=source)


def _train_in_processes(run: Run, jobs: list[tuple[str, list[str]]], args: dict, parallel: int) -> None:
    """Train the controls `parallel` at a time, each in a fresh process with its share of the CPU threads.
    Each control is its own stage, so a killed run resumes with the unfinished ones."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // parallel)
    quiet = {**args, "disable_tqdm": True}  # several progress bars at once would garble the terminal
    log(f"controls: {len(jobs)} trainings, {parallel} at a time, {threads} CPU thread(s) each")
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    with ProcessPoolExecutor(parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_child, run, name, files, quiet, threads, verbose) for name, files in jobs]
        for future in futures:
            future.result()  # a failed control raises here, after the others have finished or failed


def _train_child(run: Run, source: str, files: list[str], args: dict, threads: int, verbose: bool) -> None:
    import torch

    from fusechat3.logs import setup

    setup(verbose)  # a spawned process starts with no logging: the parent's, and its notice filter
    torch.set_num_threads(threads)
    _train_control(run, source, files, args)


# --------------------------------------------------------------------------- checks and declarations


def _check(run: Run, name: str) -> None:
    """Check training stage `name`'s settings with TRL's own config class, before the run starts anything."""
    section = getattr(run.recipe, name)
    method = _method(name)
    has_eval = section.eval_files is not None or run.recipe.building.heldout_fraction > 0
    try:
        config = method.make_config(_trl_args(run, section), str(run.output(name, "model")))
        method.options(config, section.peft, section.select_checkpoint, has_eval)
    except UserError as e:
        raise type(e)(f"{run.recipe.path or 'recipe'}: {e}") from None


def _settings(run: Run, section: str, from_target: bool) -> dict:
    """What a training stage's key depends on: its section, the seed, and the model it starts from (the target's
    reference; a stage that starts from the SFT model has the SFT stage's key among its reads)."""
    out = {"section": as_dict(getattr(run.recipe, section)), "seed": run.recipe.seed}
    return {**out, "target": run.recipe.target.model} if from_target else out


def _training_stage(name: str, help: str, *, from_target: bool, config_example: str, **extra: Any) -> StageDef:
    """A stage that trains with the method of the same name (sft, dpo, wrpo) on the build's set of that name,
    from the target (SFT) or from the SFT stage's model (DPO, WRPO), with the recipe's section of that name."""

    def run_stage(run: Run) -> None:
        require_enabled(run, stage)
        model = resolve_model(run.recipe.target.model) if from_target else model_dir(run, "sft")
        _train(run, name, name, model, _data(run, name), getattr(run.recipe, name), data=name)

    stage = StageDef(
        name=name,
        help=help,
        run=run_stage,
        reads=("build",) if from_target else ("build", "sft"),
        settings=lambda run, part: _settings(run, name, from_target),
        outputs=_TRAINING_OUTPUTS,
        models=lambda recipe: {f"target_{name}": None},
        check=lambda run: _check(run, name),
        config_entry=f"fusechat3.training.{name}",
        config_example=config_example,
        **{"enabled": implicit, "disabled_reason": IMPLICIT_OFF, **extra},
    )
    return stage


_TRAINING_OUTPUTS = {"model": "model"}

SFT = _training_stage(
    "sft",
    "SFT of the target on the SFT set (TRL); or train from a training config (model: + sft:)",
    from_target=True,
    config_example="recipes/fusechat3/llama-3.1-8b/sft.yaml",
)
DPO = _training_stage(
    "dpo",
    "DPO of the SFT model on the DPO set (TRL; e.g. length-normalized); or from a config (model: + dpo:)",
    from_target=False,
    config_example="recipes/fusechat3/llama-3.1-8b/dpo.yaml",
)
WRPO = _training_stage(
    "wrpo",
    "WRPO of the SFT model on the WRPO triplets (TRL); or from a config (model: + wrpo:)",
    from_target=False,
    config_example="recipes/wrpo/llama-3.1-8b.yaml",
    enabled=lambda recipe: implicit(recipe) and recipe.wrpo is not None,
    disabled_reason="the recipe has no `wrpo:` section (it also needs a source with role: target and scoring:)",
)
CONTROLS = StageDef(
    name="controls",
    help="single-source control runs (same SFT budget, one source's data)",
    run=run_controls,
    reads=("build", "sft"),
    settings=lambda run, part: _settings(run, "sft", from_target=True),
    parts=control_sources,
    outputs=_TRAINING_OUTPUTS,
    enabled=lambda recipe: bool(control_sources(recipe)),
    disabled_reason="controls.enabled is false (or the recipe has no scoring:)",
    models=lambda recipe: {f"target_single_{name}": name for name in control_sources(recipe)},
)


# --------------------------------------------------------------------------- explicit fusion: fuse-train

LM_ONLY = "lm_only"  # the control part of fuse-train: the same texts and steps, fusion_lambda 1


def fuse_parts(recipe) -> list[str]:
    """One fused target per teacher part (`teacher/all`, or one per source when pairwise), and the control."""
    from fusechat3.explicit.teacher_stage import teacher_parts

    parts = teacher_parts(recipe)
    return [*parts, LM_ONLY] if parts and recipe.explicit.control else parts


def _fused_models(recipe) -> dict[str, str]:
    from fusechat3.explicit.teacher_stage import ALL

    return {
        ("target_lm_only" if p == LM_ONLY else "target_fused" if p == ALL else f"target_fused_{p}"): p
        for p in fuse_parts(recipe)
    }


def run_fuse_train(run: Run, only: str | None = None) -> None:
    """Train the target on each teacher (and the language-modelling control) with `FusionTrainer`."""
    from fusechat3.explicit.teacher_stage import teacher_parts

    require_enabled(run, FUSE_TRAIN)
    parts = fuse_parts(run.recipe)
    if only is not None and only not in parts:
        from fusechat3.config import did_you_mean

        raise UserError(f"fuse-train: no part named {only!r} in this recipe{did_you_mean(only, parts)}")
    section = run.recipe.fuse_train
    model = resolve_model(run.recipe.target.model)
    for part in [only] if only else parts:
        teacher = teacher_parts(run.recipe)[0] if part == LM_ONLY else part
        files = [str(run.existing("teacher", "rows", teacher))]
        args = _trl_args(run, section)
        if part == LM_ONLY:
            args["fusion_lambda"] = 1.0  # the gold-text loss alone: what the texts teach without the teacher
        _train(run, FUSE_TRAIN.name, "fusion", model, files, section, data=None, args=args, part=part)


def _check_fuse_train(run: Run) -> None:
    from fusechat3.training.fusion import FUSION

    section = run.recipe.fuse_train
    try:
        config = FUSION.make_config(_trl_args(run, section), str(run.output(FUSE_TRAIN.name, "model", LM_ONLY)))
        FUSION.options(config, section.peft, section.select_checkpoint, section.eval_files is not None)
    except UserError as e:
        raise type(e)(f"{run.recipe.path or 'recipe'}: {e}") from None


def _fuse_settings(run: Run, part: str | None) -> dict:
    section = as_dict(run.recipe.fuse_train)
    if part == LM_ONLY:  # the control does not depend on fusion_lambda: changing it keeps the trained control
        section.pop("fusion_lambda", None)
    return {"section": section, "seed": run.recipe.seed, "target": run.recipe.target.model, "lm_only": part == LM_ONLY}


def _fuse_arguments(parser) -> None:
    parser.add_argument("--part", dest="only", help="train only this part (e.g. all, lm_only, or a source's name)")


FUSE_TRAIN = StageDef(
    name="fuse-train",
    help="fusion training of the target on each fused teacher (explicit fusion); or from a config (model: + fuse_train:)",
    run=run_fuse_train,
    reads=("teacher",),
    settings=_fuse_settings,
    parts=fuse_parts,
    outputs=_TRAINING_OUTPUTS,
    enabled=explicit,
    disabled_reason=EXPLICIT_OFF,
    models=_fused_models,
    check=_check_fuse_train,
    config_entry="fusechat3.training.fusion",
    config_example="recipes/toyworld/fuse_train.yaml",
    arguments=_fuse_arguments,
)
