"""The `sft`, `dpo` and `controls` stages of a run: train the target on the built sets
with TRL, in this process. (On a cluster, the same trainers run under `accelerate
launch -m fusechat3.training.sft|dpo --config ...`.)

- sft: the target on `build/sft.parquet` -> `sft/model`
- dpo: `sft/model` on `build/dpo.parquet` (the recipe's `dpo:` section, e.g. the
  length-normalized `loss_type: [sigmoid_norm]`) -> `dpo/model`
- controls: for each control source, the target with the same SFT settings and the same
  number of optimizer steps as the fused SFT, on that one source's SFT rows ->
  `controls/<source>/model`. Fusion has to beat these, not only the untrained target.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fusechat3.building.stage import control_sources, training_file
from fusechat3.recipe import resolve_model
from fusechat3.run import Run, log, print_summary


def _train(run: Run, name: str, kind: str, model: str, files: list[str], args: dict) -> Path:
    stage = run.stage(name)
    out = stage.dir / "model"
    if stage.done():
        log(f"{name}: done already")
        return out
    t0 = time.time()
    if out.exists():  # a run killed mid-training: its partial output is not trusted
        shutil.rmtree(out)
    args = {"seed": run.recipe.seed, **args}
    if kind == "sft":
        from fusechat3.training.sft import train_sft

        train_sft(model, files, str(out), args)
    else:
        from fusechat3.training.dpo import train_dpo

        train_dpo(model, files, str(out), args)
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
    return out


def _rows(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _trainer_state(model_dir: Path) -> dict:
    path = model_dir / "trainer_state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _last_loss(state: dict) -> float | None:
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    return round(losses[-1], 4) if losses else None


def model_dir(run: Run, stage: str) -> str:
    path = run.dir.root / stage / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no trained model: run `fusechat3 {stage.split('/')[0]} {run.recipe.path}` first")
    return str(path)


def run_sft(run: Run) -> None:
    _train(run, "sft", "sft", resolve_model(run.recipe.target.model), [training_file(run, "sft")], run.recipe.sft)


def run_dpo(run: Run) -> None:
    _train(run, "dpo", "dpo", model_dir(run, "sft"), [training_file(run, "dpo")], run.recipe.dpo)


def run_controls(run: Run) -> None:
    names = control_sources(run)
    if not names:
        log("controls: off in this recipe (controls.enabled: false)")
        return
    # Same budget as the fused SFT: its number of optimizer steps, whatever the row count.
    steps = _trainer_state(Path(model_dir(run, "sft"))).get("global_step")
    if not steps:
        raise ValueError(
            f"{run.dir.root}/sft/model has no trainer_state.json: re-run `fusechat3 sft {run.recipe.path}`"
        )
    args = {k: v for k, v in run.recipe.sft.items() if k != "num_train_epochs"}
    args["max_steps"] = int(steps)
    jobs = [(f"controls/{name}", [training_file(run, f"control-{name}")]) for name in names]
    for stage_name, _ in jobs:
        if run.stage(stage_name).done():
            log(f"{stage_name}: done already")
    jobs = [job for job in jobs if not run.stage(job[0]).done()]
    parallel = min(run.recipe.controls.parallel, len(jobs))
    if parallel <= 1:
        for stage_name, files in jobs:
            _train(run, stage_name, "sft", resolve_model(run.recipe.target.model), files, args)
        return
    _train_in_processes(run, jobs, args, parallel)


def _train_in_processes(run: Run, jobs: list[tuple[str, list[str]]], args: dict, parallel: int) -> None:
    """Train the controls `parallel` at a time, each in a fresh process with its share of the CPU threads.
    Each control is its own stage, so a killed run resumes with the unfinished ones."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // parallel)
    quiet = {**args, "disable_tqdm": True}  # several progress bars at once would garble the terminal
    log(f"controls: {len(jobs)} trainings, {parallel} at a time, {threads} CPU thread(s) each")
    model = resolve_model(run.recipe.target.model)
    with ProcessPoolExecutor(parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_child, run, name, model, files, quiet, threads) for name, files in jobs]
        for future in futures:
            future.result()  # a failed control raises here, after the others have finished or failed


def _train_child(run: Run, name: str, model: str, files: list[str], args: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _train(run, name, "sft", model, files, args)
