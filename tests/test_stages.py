"""The stage declarations: every stage is declared once, in its module, and the run keys, the order
of `fusechat3 run`, the CLI subcommands and the output paths come from those declarations. The
"adding a stage" example of docs/architecture.md is run here as written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fusechat3 import stages
from fusechat3.recipe import load_recipe
from fusechat3.run import Run

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """\
name: toy
run_dir: {run_dir}
prompts: [{{builder: toyworld}}]
sources:
  - {{name: alpha, model: toyworld:mistral-math}}
  - {{name: beta, model: toyworld:qwen2-code}}
scoring: {{reward_model: {{model: toyworld:rm}}}}
target: {{model: toyworld:target}}
controls: {{enabled: true}}
eval: {{prompts: [{{builder: toyworld}}]}}
"""


def _run(tmp_path: Path, overrides=()) -> Run:
    path = tmp_path / "imf.yaml"
    path.write_text(RECIPE.format(run_dir=tmp_path / "run"))
    return Run(load_recipe(path, list(overrides)))


def test_every_stage_is_declared_once_and_reads_earlier_stages():
    order = stages.names()
    assert order[:4] == ["prompts", "sample", "score", "build"] and order[-1] == "eval"
    for i, stage in enumerate(stages.stages().values()):
        assert stage.help and callable(stage.run)
        for read in stage.reads:
            assert read in order[:i], f"{stage.name} reads {read}, which does not run before it"


def test_the_cli_has_one_command_per_stage():
    from fusechat3.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert set(stages.names()) <= set(sub.choices)


def test_keys_follow_the_declared_reads(tmp_path):
    run = _run(tmp_path)
    keys = {name: run.key(name) for name in ["prompts", "sample/alpha", "score", "build", "sft", "dpo"]}
    # A sampling setting of one source changes that source's part and every stage after it, not the other.
    changed = _run(tmp_path, ["sources.0.sampling.temperature=0.5"])
    assert changed.key("prompts") == keys["prompts"]
    assert changed.key("sample/beta") == run.key("sample/beta")
    for name in ["sample/alpha", "score", "build", "sft", "dpo"]:
        assert changed.key(name) != keys[name], name
    # A dpo setting changes dpo only.
    dpo = _run(tmp_path, ["dpo.beta=0.5"])
    assert [dpo.key(n) == keys[n] for n in keys] == [True, True, True, True, True, False]


def test_outputs_and_models_come_from_the_declarations(tmp_path):
    run = _run(tmp_path)
    root = tmp_path / "run"
    assert run.output("build", "sft") == root / "build" / "sft.parquet"
    assert run.output("build", "control", source="alpha") == root / "build" / "control-alpha.parquet"
    assert run.output("controls", "model", "beta") == root / "controls" / "beta" / "model"
    models = run.models()
    assert models["target_dpo"] == str(root / "dpo" / "model")
    assert set(models) == {
        "target_before",
        "target_sft",
        "target_dpo",
        "target_single_alpha",
        "target_single_beta",
        "alpha",
        "beta",
    }  # no wrpo: the recipe has no wrpo section
    assert run.model_key("target_single_beta") == run.key("controls/beta")
    assert run.parts("eval") == [f"eval/{m}" for m in models]
    with pytest.raises(KeyError):
        run.output("build", "nothing")


def _docs_example() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Adding a stage", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_example_adds_a_stage(tmp_path, monkeypatch):
    package = tmp_path / "example_stage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "count.py").write_text(_docs_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    order = list(stages.ORDER)
    order.insert(order.index("fusechat3.building.stage:BUILD") + 1, "example_stage.count:COUNT")
    monkeypatch.setattr(stages, "ORDER", tuple(order))
    stages.stages.cache_clear()
    try:
        assert stages.names()[4] == "count"
        run = _run(tmp_path)
        # A finished build with two SFT rows, then the new stage by its CLI-visible name.
        build = run.stage("build")
        rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 2
        build.write_shard("sft", rows)
        build.finish({})
        stages.get("count").run(run)
        assert pq.read_table(run.output("count", "rows")).num_rows == 2
        assert run.stage("count").done()
        # Its key follows the build's.
        assert _run(tmp_path, ["building.seed=3"]).key("count") != run.key("count")
    finally:
        stages.stages.cache_clear()


def test_help_lists_the_stages_without_heavy_imports():
    code = textwrap.dedent(
        """
        import sys
        from fusechat3 import stages
        print(stages.names(), sorted(m for m in ('torch', 'vllm', 'trl', 'transformers') if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().endswith("[]"), out.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sft.peft={rr: 8}", r"imf\.yaml: peft\.rr: not a LoraConfig field; did you mean 'r'\?"),
        (
            "dpo.learning_rat=1e-6",
            r"imf\.yaml: dpo\.learning_rat: not a DPOConfig field; did you mean 'learning_rate'\?",
        ),
        ("sft.select_checkpoint={metric: eval_loss}", r"imf\.yaml: .*select_checkpoint: needs held-out data"),
        ("scoring.reward_model.backend=onnx", r"key 'scoring\.reward_model\.backend' must name a reward backend"),
    ],
)
def test_run_checks_every_stage_before_it_starts_any(tmp_path, override, message):
    """A mistake in a late stage's settings (the training sections: LoRA, checkpoint choice, TRL fields)
    is one line before the first stage runs, not after hours of sampling."""
    from fusechat3.errors import UserError

    run = _run(tmp_path, [override])
    with pytest.raises(UserError, match=message):
        stages.run_all(run)
    assert not (tmp_path / "run" / "prompts").exists()
