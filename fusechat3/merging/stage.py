"""The `merge/<name>` stage: the pairwise-fused targets (`fuse-train/<source>`) merged into one model per
entry of the recipe's `merge:` section (FuseChat-1.0 merges with VaRM, FuseChat-2.0 with SCE; the
baselines are any mergekit method or MergeBench preset). Each merge is `merge.merge` on the run's
folders; its model is `target_merge_<name>`, evaluated with the others, and the scoreboard adds
MergeBench's normalized performance: its accuracy over the best input's, per domain.
"""

from __future__ import annotations

import time

from fusechat3.errors import UserError
from fusechat3.recipe import as_dict, resolve_model
from fusechat3.run import Run, log, print_summary
from fusechat3.stages import StageDef, require_enabled


def merge_parts(recipe) -> list[str]:
    return list(recipe.merge or {})


def _model_name(part: str) -> str:
    return f"target_merge_{part}"


def _inputs(recipe) -> list[str]:
    """The fuse-train parts merged: one per source of the pairwise fusion."""
    from fusechat3.explicit.teacher_stage import teacher_parts

    return teacher_parts(recipe)


def _merged_from(recipe) -> dict[str, list[str]]:
    return {_model_name(p): [f"target_fused_{s}" for s in _inputs(recipe)] for p in merge_parts(recipe)}


def _needs_base(raw: dict) -> bool:
    """Whether the method takes a base model (task vectors); a plain average (linear) takes none."""
    from mergekit import merge_methods
    from mergekit.merge_methods import BasePolicy

    from fusechat3.merging.methods import register
    from fusechat3.merging.presets import apply_preset

    register()
    method = merge_methods.get(apply_preset(raw, "merge")["merge_method"])
    return method.spec.contract.base == BasePolicy.REQUIRED


def _config(run: Run, part: str, models: list[str] | None = None, base: str | None = None) -> dict:
    """The mergekit config of merge `part`: the pairwise-fused targets, and the pivot as the base where one is taken."""
    recipe = run.recipe
    if models is None:
        models = [str(run.existing("fuse-train", "model", s)) for s in _inputs(recipe)]
    raw = recipe.merge[part].config(models, recipe.seed)
    if _needs_base(raw):
        raw["base_model"] = base or resolve_model(recipe.target.model)
    return raw


def run_merge(run: Run, only: str | None = None) -> None:
    """Merge the pairwise-fused targets once per `merge:` entry (or only the entry `only`)."""
    import shutil

    from fusechat3.merging.merge import merge

    require_enabled(run, MERGE)
    parts = merge_parts(run.recipe)
    if only is not None and only not in parts:
        from fusechat3.config import did_you_mean

        raise UserError(f"merge: no entry named {only!r} in this recipe's merge: section{did_you_mean(only, parts)}")
    for part in [only] if only else parts:
        stage = run.stage(f"{MERGE.name}/{part}")
        if stage.done():
            log(f"merge/{part}: done already")
            continue
        out = run.output(MERGE.name, "model", part)
        if out.exists():  # a merge killed part-way: its partial output is not trusted
            shutil.rmtree(out)
        t0 = time.time()
        raw = _config(run, part)
        command = f"fusechat3 merge {run.recipe.path} --part {part}"
        merge(raw, where=f"{run.recipe.path}: merge.{part}", command=command, output_dir=str(out))
        summary = {
            "method": raw.get("merge_method") or raw.get("preset"),
            "inputs": len(raw["models"]),
            "seconds": round(time.time() - t0, 1),
        }
        stage.finish(summary)
        print_summary(f"merge/{part}", [(k, v) for k, v in summary.items() if k != "seconds"], time.time() - t0)


def _check(run: Run) -> None:
    """Each entry parses as a mergekit config (method, parameters) before anything runs."""
    from fusechat3.merging.merge import parse_merge_config

    recipe = run.recipe
    if recipe.explicit is None or not recipe.explicit.pairwise:
        raise UserError(
            f"{recipe.path or 'recipe'}: merge: merges the pairwise-fused targets: set explicit.pairwise: true"
        )
    for part in merge_parts(recipe):
        where = f"{recipe.path or 'recipe'}: merge.{part}"
        parse_merge_config(recipe.merge[part].config(["a", "b"], recipe.seed), where)  # the method, the preset
        parse_merge_config(_config(run, part, models=["a", "b"], base="base"), where)  # with its base where taken


def _settings(run: Run, part: str | None) -> dict:
    return {
        "merge": as_dict(run.recipe.merge[part]) if part else as_dict(run.recipe.merge),
        "target": run.recipe.target.model,
    }


def _arguments(parser) -> None:
    parser.add_argument("--part", dest="only", help="run only this merge (an entry of the recipe's merge: section)")


MERGE = StageDef(
    name="merge",
    help="merge the pairwise-fused targets (VaRM, SCE, any mergekit method); or from a merge config (merge_method:)",
    run=run_merge,
    reads=("fuse-train",),
    settings=_settings,
    parts=merge_parts,
    outputs={"model": "model"},
    enabled=lambda recipe: recipe.merge is not None,
    disabled_reason="the recipe has no `merge:` section",
    models=lambda recipe: {_model_name(p): p for p in merge_parts(recipe)},
    merged_from=_merged_from,
    check=_check,
    config_entry="fusechat3.merging.merge",
    config_example="recipes/mergebench/ties.yaml",
    is_config=lambda raw: "merge_method" in raw or "preset" in raw,
    arguments=_arguments,
)
