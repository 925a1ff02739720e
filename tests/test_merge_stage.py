"""The `merge/<name>` stage of a run: the pairwise-fused targets (stand-ins here: moved copies of the toy target,
written where fuse-train puts its models) merged once per `merge:` entry, resumable, each a model of the run;
the scoreboard's normalized performance; the recipe checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusechat3.errors import UserError
from fusechat3.evaluation.stage import normalized_performance
from fusechat3.recipe import load_recipe
from fusechat3.run import Run, model_names
from tests.test_merge_cli import _variant

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toyworld" / "fusechat.yaml"
SOURCES = ["mistral-math", "qwen2-code", "gpt2-chat"]


def _run(tmp_path, *overrides) -> Run:
    return Run(load_recipe(RECIPE, [f"run_dir={tmp_path / 'run'}", *overrides]))


def _fake_pairwise_targets(run: Run) -> None:
    for i, src in enumerate(SOURCES):
        _variant(run.output("fuse-train", "model", src), seed=20 + i, scale=0.02 * (i + 1))
        run.stage(f"fuse-train/{src}").finish({"fake": True})


def test_merge_stage_merges_the_pairwise_targets_once_per_entry(tmp_path):
    from fusechat3.merging.stage import run_merge

    run = _run(tmp_path)
    assert {f"target_merge_{m}" for m in ("varm", "sce", "sce_mergekit", "linear", "ties")} <= set(
        model_names(run.recipe)
    )
    _fake_pairwise_targets(run)
    run_merge(run)
    models = run.models()
    for name in ("varm", "sce", "sce_mergekit", "linear", "ties"):
        out = Path(models[f"target_merge_{name}"])
        assert (out / "model.safetensors").is_file() and (out / "README.md").is_file(), name
        assert run.stage(f"merge/{name}").done()
    # linear: the plain average of the three pairwise targets (no base)
    key = "model.layers.3.self_attn.o_proj.weight"
    ins = [load_file(str(run.output("fuse-train", "model", s) / "model.safetensors"))[key] for s in SOURCES]
    linear = load_file(str(Path(models["target_merge_linear"]) / "model.safetensors"))[key]
    assert torch.allclose(linear, sum(ins) / 3, atol=1e-6)
    # a second run is a no-op; the card says how to remake it
    stamp = (Path(models["target_merge_varm"]) / "model.safetensors").stat().st_mtime_ns
    run_merge(_run(tmp_path))
    assert (Path(models["target_merge_varm"]) / "model.safetensors").stat().st_mtime_ns == stamp
    assert "--part varm" in (Path(models["target_merge_varm"]) / "README.md").read_text()


def test_merge_stage_without_the_pairwise_targets_is_one_line(tmp_path):
    from fusechat3.merging.stage import run_merge

    with pytest.raises(UserError, match="fuse-train"):
        run_merge(_run(tmp_path))


def test_normalized_performance_is_merged_over_the_best_input_per_domain(tmp_path):
    run = _run(tmp_path)
    board = {
        f"target_fused_{s}": {"math": m, "code": c, "average": (m + c) / 2}
        for s, m, c in [("mistral-math", 0.8, 0.2), ("qwen2-code", 0.1, 0.9), ("gpt2-chat", 0.4, 0.0)]
    }
    board["target_merge_varm"] = {"math": 0.4, "code": 0.9, "average": 0.65}
    norm = normalized_performance(run.recipe, board)
    assert norm == {"target_merge_varm": {"math": 0.5, "code": 1.0, "average": 0.75}}


def test_a_merge_section_needs_pairwise_fusion_and_known_methods(tmp_path):
    from fusechat3.merging.stage import MERGE

    with pytest.raises(UserError, match="explicit.pairwise: true"):
        MERGE.check(_run(tmp_path, "explicit.pairwise=false"))
    with pytest.raises(UserError, match="did you mean 'varm'"):
        MERGE.check(_run(tmp_path, "merge.varm.merge_method=varn"))
    with pytest.raises(UserError, match="merge_method or preset"):
        _run(tmp_path, "merge.varm.preset=ties")
