"""Every YAML file under recipes/, found by glob (a new folder is covered without editing this file), loads
the way its kind is used: a run recipe with the recipe loader and the run's own stage checks, a training
config with its TRL config class, an accelerate config with accelerate's loader, a merge config as
`fusechat3 merge` parses it (mergekit's config model; its Hub models are not fetched). The paper's values are
checked elsewhere (test_training_recipes.py, test_recipe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILES = sorted(RECIPES.glob("**/*.yaml"))
TRAINING_SECTIONS = ("sft", "dpo", "wrpo", "fuse_train")


def kind_of(path: Path, raw: object) -> str:
    """What a YAML file under recipes/ is, from its place and content; "" when it is none of the known kinds."""
    if path.parent == RECIPES / "accelerate":
        return "accelerate"
    if not isinstance(raw, dict):
        return ""
    if "sources" in raw or ("eval" in raw and "target" in raw):  # a fusion recipe, or an evaluation-only one
        return "run"
    if "model" in raw and sum(section in raw for section in TRAINING_SECTIONS) == 1:
        return "training"
    if "merge_method" in raw or "preset" in raw:
        return "merge"
    return ""


def test_the_glob_finds_every_recipe_file():
    assert len(RECIPE_FILES) > 10, RECIPE_FILES
    assert not sorted(RECIPES.glob("**/*.yml")), "name recipe files *.yaml: *.yml ones are not checked"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_file_loads(path, tmp_path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    kind = kind_of(path, raw)
    assert kind, (
        f"{path.relative_to(RECIPES)}: unknown kind of YAML (a run recipe has `sources:`, or `target:` and `eval:`; a training config "
        f"`model:` and one of {', '.join(TRAINING_SECTIONS)}; a merge config `merge_method:` or `preset:`; an accelerate config lives in recipes/accelerate/)"
    )
    checks = {"run": _check_run_recipe, "training": _check_training_config, "accelerate": _check_accelerate_config}
    checks["merge"] = _check_merge_config
    checks[kind](path, raw, tmp_path)


def _check_run_recipe(path: Path, raw: dict, tmp_path: Path) -> None:
    """The recipe loader's validation, then every enabled stage's own check (TRL settings, reward backend),
    as `fusechat3 run` does before it starts anything."""
    from fusechat3.recipe import load_recipe
    from fusechat3.run import Run
    from fusechat3.stages import stages

    run = Run(load_recipe(path, [f"run_dir={tmp_path}"]))
    for stage in stages().values():
        if stage.check is not None and stage.enabled(run.recipe):
            stage.check(run)


def _check_training_config(path: Path, raw: dict, tmp_path: Path) -> None:
    """Read as the training entry point reads it, then the TRL config built and the options checked."""
    from trl import DPOConfig, SFTConfig

    from fusechat3.training.config import build_trl_config, load_run_config
    from fusechat3.training.dpo import DPO
    from fusechat3.training.fusion import FUSION
    from fusechat3.training.fusion_trainer import FusionConfig
    from fusechat3.training.sft import SFT
    from fusechat3.training.wrpo import WRPO
    from fusechat3.training.wrpo_trainer import WRPOConfig

    methods = {
        "sft": (SFTConfig, (), SFT.options),
        "dpo": (DPOConfig, ("ref_model",), DPO.options),
        "wrpo": (WRPOConfig, ("ref_model",), WRPO.options),
        "fuse_train": (FusionConfig, (), FUSION.options),
    }
    (section,) = [s for s in TRAINING_SECTIONS if s in raw]
    config_cls, extra_keys, options = methods[section]
    rc = load_run_config(str(path), section, config_cls, extra_keys=extra_keys)
    config = build_trl_config(config_cls, rc.args, str(tmp_path), f"{path}: {section}")
    assert isinstance(config, config_cls)
    options(config, rc.peft, rc.select_checkpoint, has_eval=rc.has_eval)


def _check_accelerate_config(path: Path, raw: dict, tmp_path: Path) -> None:
    """accelerate's own loader rejects unknown top-level keys; the nested sections become launch arguments,
    so each of their keys must be one (an unknown one would be silently ignored)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    assert isinstance(raw, dict), path
    assert path.read_text(encoding="utf-8").startswith("#")  # documented: what it is for and how to launch it
    ClusterConfig.from_yaml_file(str(path))
    launch_args = {action.dest for action in launch_command_parser()._actions}
    for section in ("deepspeed_config", "fsdp_config"):
        unknown = set(raw.get(section, {})) - launch_args
        assert not unknown, f"{path.name}.{section}: {unknown}"


def _check_merge_config(path: Path, raw: dict, tmp_path: Path) -> None:
    """Parsed as `fusechat3 merge` parses it: the preset expanded, the method known, mergekit's config model;
    documented (what it merges and the command)."""
    from fusechat3.merging.merge import parse_merge_config

    conf, ours = parse_merge_config(raw, str(path))
    assert path.read_text(encoding="utf-8").startswith("#")
    assert f"fusechat3 merge {path.relative_to(RECIPES.parent)}" in path.read_text(encoding="utf-8")
    assert len(conf.referenced_models()) >= 3 and ours["output_dir"]
