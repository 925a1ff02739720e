"""Recipe loading: defaults, one-line errors naming file and key, `--set` overrides, model refs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fusechat3 import recipe as recipe_mod
from fusechat3.recipe import (
    RecipeError,
    apply_overrides,
    load_recipe,
    parse_recipe,
    recipe_hash,
    resolve_model,
)

MINIMAL = """\
name: toy
prompts:
  - builder: toyworld
    args: {split: train, limit: 10}
sources:
  - name: alpha
    model: toyworld:alpha
    sampling: {temperature: 0.7, n_per_domain: {code: 8}}
  - name: beta
    model: some-org/beta
scoring:
  reward_model: {model: toyworld:rm}
target:
  model: toyworld:target
"""


def write(tmp_path, text: str, name: str = "imf.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def error_of(path: str, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_recipe_gets_documented_defaults(tmp_path):
    path = write(
        tmp_path,
        MINIMAL + "sft: {learning_rate: 5e-6}\neval:\n  prompts: [{builder: toyworld}]\n  sampling: {max_tokens: 64}\n",
    )
    r = load_recipe(path)
    assert r.path == path
    assert r.run_path.as_posix() == "runs/toy"
    assert [s.name for s in r.sources] == ["alpha", "beta"]
    alpha = r.source("alpha")
    assert alpha.sampling.temperature == 0.7 and alpha.sampling.top_p == 0.95 and alpha.sampling.n == 5
    assert alpha.sampling.n_for("code") == 8 and alpha.sampling.n_for("math") == 5
    assert r.source("beta").sampling.temperature == 0.8 and r.source("beta").domains is None
    assert r.prompts[0].args == {"split": "train", "limit": 10}
    assert r.scoring.reward_model.batch_size == 16 and r.scoring.code.timeout_s == 10.0
    assert r.building.reward_gap == [0.01, 0.1] and r.building.sft_only_domains == ["zh"]
    assert r.building.gap_for("math") == [0.01, 0.1]
    assert r.sampler.backend == "vllm" and r.sampler.shard_size == 512
    # YAML 1.1 would read 5e-6 as a string; TRL needs a float.
    assert r.sft.trl == {"learning_rate": 5e-6} and isinstance(r.sft.trl["learning_rate"], float)
    # A partial eval.sampling keeps the eval defaults (greedy, one sample), not SamplingSpec's.
    assert r.eval.sampling.max_tokens == 64 and r.eval.sampling.n == 1 and r.eval.sampling.temperature == 0.0
    assert r.controls.enabled is False and r.dpo.trl == {}


def test_defaults_are_not_shared_between_recipes(tmp_path):
    a = load_recipe(write(tmp_path, MINIMAL))
    a.building.reward_gap.append(9.0)
    a.source("beta").sampling.stop.append("x")
    b = load_recipe(write(tmp_path, MINIMAL))
    assert b.building.reward_gap == [0.01, 0.1] and b.source("beta").sampling.stop == []


def test_unknown_key_top_level_suggests_closest(tmp_path):
    path = write(tmp_path, MINIMAL + "biulding: {}\n")
    assert error_of(path) == f"{path}: unknown key 'biulding' (did you mean 'building'?)"


def test_unknown_key_nested_in_list_names_the_full_path(tmp_path):
    path = write(tmp_path, MINIMAL.replace("{temperature: 0.7,", "{temprature: 0.7,"))
    assert error_of(path) == f"{path}: unknown key 'sources[0].sampling.temprature' (did you mean 'temperature'?)"


def test_unknown_key_without_close_match_lists_the_keys(tmp_path):
    path = write(tmp_path, MINIMAL.replace("target:\n  model:", "target:\n  zzz: 1\n  model:"))
    assert error_of(path) == f"{path}: unknown key 'target.zzz' (choose from: model)"


def test_path_is_not_a_yaml_key(tmp_path):
    path = write(tmp_path, MINIMAL + "path: elsewhere.yaml\n")
    assert "unknown key 'path'" in error_of(path)


def test_wrong_types(tmp_path):
    path = write(tmp_path, MINIMAL.replace("n_per_domain: {code: 8}", "n: five"))
    assert error_of(path) == f"{path}: key 'sources[0].sampling.n' must be an integer, got 'five'"
    path = write(tmp_path, MINIMAL.replace("n_per_domain: {code: 8}", "n: true"))
    assert error_of(path) == f"{path}: key 'sources[0].sampling.n' must be an integer, got true"
    path = write(tmp_path, MINIMAL.replace("{code: 8}", "{code: many}"))
    assert error_of(path) == f"{path}: key 'sources[0].sampling.n_per_domain.code' must be an integer, got 'many'"
    path = write(tmp_path, MINIMAL + "building: {zh_source: [alpha]}\n")
    assert error_of(path) == f"{path}: key 'building.zh_source' must be a string or null, got ['alpha']"
    path = write(tmp_path, MINIMAL + "sft: [1]\n")
    assert error_of(path) == f"{path}: key 'sft' must be a mapping, got [1]"
    path = write(tmp_path, MINIMAL + "eval: 3\n")
    assert error_of(path) == f"{path}: key 'eval' must be a mapping or null, got 3"
    # An error inside an optional section names the inner key, not the section.
    path = write(tmp_path, MINIMAL + "eval: {prompts: [{builder: x}], sampling: {top_p: high}}\n")
    assert error_of(path) == f"{path}: key 'eval.sampling.top_p' must be a number, got 'high'"


def test_ints_are_accepted_as_floats(tmp_path):
    r = load_recipe(write(tmp_path, MINIMAL.replace("temperature: 0.7", "temperature: 1")))
    assert r.source("alpha").sampling.temperature == 1.0 and isinstance(r.source("alpha").sampling.temperature, float)


def test_missing_required_keys(tmp_path):
    path = write(tmp_path, MINIMAL.replace("target:\n  model: toyworld:target\n", "target: {}\n"))
    assert error_of(path) == f"{path}: missing required key 'target.model'"
    path = write(tmp_path, MINIMAL.replace("  - name: beta\n", "  - nam: beta\n"))
    assert error_of(path) == f"{path}: unknown key 'sources[1].nam' (did you mean 'name'?)"
    path = write(tmp_path, MINIMAL.replace("    model: some-org/beta\n", ""))
    assert error_of(path) == f"{path}: missing required key 'sources[1].model'"
    path = write(tmp_path, MINIMAL.split("scoring:")[0] + "target: {model: t}\n")
    assert error_of(path) == (
        f"{path}: key 'scoring' is missing: give scoring: (implicit fusion), explicit: (explicit fusion), or both; "
        "or only eval: (evaluation of target and eval.models)"
    )


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: toy\nprompts:\n  - builder: x\n  bad: [1, 2\n")
    message = error_of(path)
    assert message.startswith(f"{path}: not valid YAML at line ")
    path = write(tmp_path, "name: toy\nseed: 1\nseed: 2\n")
    assert error_of(path) == f"{path}: not valid YAML at line 3: duplicate key 'seed'"
    path = write(tmp_path, "name: toy\nsources:\n  - name: a\n    model: b\n   sampling: {}\n")
    assert error_of(path).startswith(f"{path}: not valid YAML at line 5: ")


def test_not_a_mapping_empty_and_missing_file(tmp_path):
    path = write(tmp_path, "- name: toy\n")
    assert (
        error_of(path) == f"{path}: a recipe must be a mapping of keys (name:, prompts:, ...), got [{{'name': 'toy'}}]"
    )
    path = write(tmp_path, "# nothing\n")
    assert error_of(path) == f"{path}: the recipe is empty"
    missing = str(tmp_path / "nope.yaml")
    assert error_of(missing) == f"{missing}: no such recipe file"


def test_overrides_parse_yaml_values_and_index_lists(tmp_path):
    path = write(tmp_path, MINIMAL)
    r = load_recipe(
        path,
        [
            "sources.0.sampling.n=8",
            "sources[1].sampling.stop=['</s>', \"\\n\\n\"]",  # YAML escapes work in double quotes
            "name=foo",
            "building.reward_gap=[0.0, 1.0]",
            "sampler.engine.dtype=float32",  # `sampler:` is absent: the mapping is created
            "building.zh_source=beta",
            "run_dir=null",
        ],
    )
    assert r.source("alpha").sampling.n == 8 and isinstance(r.source("alpha").sampling.n, int)
    assert r.source("beta").sampling.stop == ["</s>", "\n\n"]
    assert r.name == "foo" and r.run_path.as_posix() == "runs/foo"
    assert r.building.reward_gap == [0.0, 1.0]
    assert r.sampler.engine == {"dtype": "float32"} and r.building.zh_source == "beta"


def test_apply_overrides_copies_and_reports_bad_paths():
    raw = {"name": "x", "sources": [{"name": "a", "sampling": {"n": 1}}]}
    out = apply_overrides(raw, ["sources.0.sampling.n=3", "sources.0.name=b"])
    assert out["sources"][0] == {"name": "b", "sampling": {"n": 3}}
    assert raw["sources"][0] == {"name": "a", "sampling": {"n": 1}}  # the input is untouched
    cases = {
        "sources.2.sampling.n=8": "--set 'sources.2.sampling.n=8': 'sources.2' must be a list index 0..0",
        "sources.x.n=8": "--set 'sources.x.n=8': 'sources.x' must be a list index 0..0",
        "name.first=y": "--set 'name.first=y': 'name' is 'x', not a mapping or list, so it has no 'first'",
        "name": "--set 'name': an override must look like key.path=value (e.g. sources.0.sampling.n=8)",
        "a..b=1": "--set 'a..b=1': an override must look like key.path=value (e.g. sources.0.sampling.n=8)",
    }
    for item, message in cases.items():
        with pytest.raises(RecipeError) as info:
            apply_overrides(raw, [item])
        assert str(info.value) == message
    with pytest.raises(RecipeError, match=r"^--set 'seed=\[1,': the value is not valid YAML at line 1: "):
        apply_overrides(raw, ["seed=[1,"])


def test_override_errors_name_the_file_and_are_validated(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert (
        error_of(path, ["sources.5.model=x"])
        == f"{path}: --set 'sources.5.model=x': 'sources.5' must be a list index 0..1"
    )
    assert error_of(path, ["sources.0.sampling.n=five"]) == (
        f"{path}: key 'sources[0].sampling.n' must be an integer, got 'five'"
    )
    assert error_of(path, ["sources.0.sampling.temprature=1"]) == (
        f"{path}: unknown key 'sources[0].sampling.temprature' (did you mean 'temperature'?)"
    )


def test_zh_source_and_controls_must_name_sources(tmp_path):
    path = write(tmp_path, MINIMAL + "building: {zh_source: alpah}\n")
    assert error_of(path) == f"{path}: key 'building.zh_source' names no source: 'alpah' (did you mean 'alpha'?)"
    path = write(tmp_path, MINIMAL + "building: {zh_source: qwen}\n")
    assert error_of(path) == f"{path}: key 'building.zh_source' names no source: 'qwen' (choose from: alpha, beta)"
    assert load_recipe(write(tmp_path, MINIMAL + "building: {zh_source: beta}\n")).building.zh_source == "beta"
    path = write(tmp_path, MINIMAL + "controls: {enabled: true, sources: [alpha, bta]}\n")
    assert error_of(path) == f"{path}: key 'controls.sources[1]' names no source: 'bta' (did you mean 'beta'?)"


def test_target_role_marks_the_targets_own_samples(tmp_path):
    own = "  - name: own\n    model: toyworld:target\n    role: target\n"
    r = load_recipe(write(tmp_path, MINIMAL.replace("scoring:", own + "scoring:")))
    assert [s.name for s in r.fusion_sources] == ["alpha", "beta"]
    assert r.target_samples.name == "own"
    assert load_recipe(write(tmp_path, MINIMAL)).target_samples is None
    path = write(tmp_path, MINIMAL.replace("scoring:", own.replace("role: target", "role: teacher") + "scoring:"))
    assert error_of(path) == f"{path}: key 'sources[2].role' must be one of ['source', 'target'], got 'teacher'"
    path = write(tmp_path, MINIMAL.replace("scoring:", own + own.replace("own", "own2") + "scoring:"))
    assert "sources[3].role' only one entry may have role: target" in error_of(path)
    path = write(tmp_path, MINIMAL.replace("scoring:", own + "scoring:") + "building: {zh_source: own}\n")
    assert error_of(path) == f"{path}: key 'building.zh_source' names no source: 'own' (choose from: alpha, beta)"


def test_value_checks(tmp_path):
    path = write(tmp_path, MINIMAL.replace("- name: beta", "- name: alpha"))
    assert error_of(path) == (
        f"{path}: key 'sources[1].name' repeats the source name 'alpha': source names must be unique"
    )
    path = write(tmp_path, MINIMAL + "building: {reward_gap: [0.2, 0.1]}\n")
    assert (
        error_of(path)
        == f"{path}: key 'building.reward_gap' must be two numbers [lo, hi] with 0 <= lo <= hi, got [0.2, 0.1]"
    )
    path = write(tmp_path, MINIMAL + "building: {reward_gap: [0.1]}\n")
    assert "key 'building.reward_gap' must be two numbers" in error_of(path)
    path = write(tmp_path, MINIMAL + "building: {reward_gap_per_domain: {math: [1, 0]}}\n")
    assert "key 'building.reward_gap_per_domain.math' must be two numbers" in error_of(path)
    r = load_recipe(write(tmp_path, MINIMAL + "building: {reward_gap_per_domain: {math: null, code: [0, 2]}}\n"))
    assert r.building.gap_for("math") is None and r.building.gap_for("code") == [0.0, 2.0]
    path = write(tmp_path, MINIMAL.replace("sources:\n", "sources: []\nx_sources:\n"))
    assert "unknown key 'x_sources'" in error_of(path)
    path = write(tmp_path, MINIMAL.replace("name: toy", "name: a/b"))
    assert (
        error_of(path) == f"{path}: key 'name' must be a simple folder name (letters, digits, '_', '.', '-'), got 'a/b'"
    )
    path = write(tmp_path, MINIMAL.replace("temperature: 0.7", "top_p: 0"))
    assert error_of(path) == f"{path}: key 'sources[0].sampling.top_p' must be in (0, 1], got 0.0"


def test_empty_sources_are_rejected():
    raw = {
        "name": "t",
        "prompts": [{"builder": "x"}],
        "sources": [],
        "scoring": {"reward_model": {"model": "r"}},
        "target": {"model": "t"},
    }
    with pytest.raises(RecipeError) as info:
        parse_recipe(raw, "r.yaml")
    assert str(info.value) == "r.yaml: key 'sources' is empty: a fusion recipe needs at least one entry in sources"


def test_source_lookup_suggests_a_name(tmp_path):
    path = write(tmp_path, MINIMAL)
    r = load_recipe(path)
    with pytest.raises(RecipeError) as info:
        r.source("alfa")
    assert str(info.value) == f"{path}: no source named 'alfa' (did you mean 'alpha'?)"


def test_resolve_model(tmp_path, monkeypatch):
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assets = tmp_path / "assets"
    monkeypatch.setattr(recipe_mod, "TOYWORLD_ASSETS", assets)
    with pytest.raises(RecipeError) as info:
        resolve_model("toyworld:math")
    assert str(info.value) == f"model 'toyworld:math': no toyworld assets are built in {assets}: run `make toyworld`"
    (assets / "math-llama").mkdir(parents=True)
    (assets / "code-qwen").mkdir()
    (assets / "README.md").write_text("not a model")
    assert resolve_model("toyworld:math-llama") == str(assets / "math-llama")
    with pytest.raises(RecipeError) as info:
        resolve_model("toyworld:math-lama")
    assert str(info.value) == "model 'toyworld:math-lama': no such toyworld asset (did you mean 'math-llama'?)"
    with pytest.raises(RecipeError) as info:
        resolve_model("toyworld:README.md")
    assert str(info.value) == "model 'toyworld:README.md': no such toyworld asset (choose from: code-qwen, math-llama)"


def test_default_assets_folder_is_inside_the_package():
    assert recipe_mod.TOYWORLD_ASSETS.parent.name == "toyworld"
    assert recipe_mod.TOYWORLD_ASSETS.parent.parent.name == "fusechat3"


def test_recipe_hash_is_stable_and_tracks_settings(tmp_path):
    a = load_recipe(write(tmp_path, MINIMAL, "a.yaml"))
    b = load_recipe(write(tmp_path, MINIMAL, "b.yaml"))
    assert recipe_hash(a) == recipe_hash(b)  # the file's location is not a setting
    assert recipe_hash(a.source("alpha").sampling) != recipe_hash(a.source("beta").sampling)
    c = load_recipe(write(tmp_path, MINIMAL, "c.yaml"), ["sources.1.sampling.seed=1"])
    assert recipe_hash(c) != recipe_hash(a)
    assert recipe_hash(c.source("alpha")) == recipe_hash(a.source("alpha"))
    assert recipe_hash([a.source("alpha"), {"x": a.target}]) == recipe_hash([b.source("alpha"), {"x": b.target}])
    assert len(recipe_hash(a)) == 16


def test_importing_recipe_and_store_stays_light():
    code = (
        "import sys, fusechat3.recipe, fusechat3.store\n"
        "heavy = [m for m in ('torch', 'vllm', 'trl', 'transformers', 'pyarrow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_per_source_backend_engine_and_chat_template(tmp_path):
    from fusechat3.sampling.base import sampling_key

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.jinja").write_text("{{ messages[0]['content'] }}")
    path = write(tmp_path, MINIMAL)
    overrides = [
        "sampler.engine={max_model_len: 4096, dtype: bfloat16}",
        "sources.1.backend=openai",
        "sources.1.engine={base_url: 'http://h:8000/v1', max_model_len: 2048}",
        "sources.1.chat_template=templates/t.jinja",
    ]
    r = load_recipe(path, overrides)
    alpha, beta = r.sources
    assert r.sampler_for(alpha) == ("vllm", {"max_model_len": 4096, "dtype": "bfloat16"})
    assert r.sampler_for(beta) == (
        "openai",
        {"max_model_len": 2048, "dtype": "bfloat16", "base_url": "http://h:8000/v1"},
    )
    # The template file is found next to the recipe, wherever the command runs.
    assert r.chat_template(beta) == "{{ messages[0]['content'] }}" and r.chat_template(alpha) is None

    def key(extra=()):
        rr = load_recipe(path, [*overrides, *extra])
        return sampling_key(rr, rr.sources[1])

    base = key()
    # Settings that change what is sampled change the key ...
    assert key(["sources.1.sampling.seed=1"]) != base
    assert key(["sources.1.engine.revision=abc"]) != base
    assert key(["sampler.engine.dtype=float32"]) != base
    (tmp_path / "templates" / "t.jinja").write_text("{{ messages[-1]['content'] }}")
    assert key() != base
    (tmp_path / "templates" / "t.jinja").write_text("{{ messages[0]['content'] }}")
    assert key() == base
    # ... settings that only change speed or place do not: such a run resumes.
    assert key(["sources.1.engine.max_concurrency=128", "sources.1.engine.base_url=http://other:1/v1"]) == base
    assert key(["sampler.engine.tensor_parallel_size=8", "sampler.engine.gpu_memory_utilization=0.5"]) == base


def test_missing_chat_template_fails_at_load(tmp_path):
    path = write(tmp_path, MINIMAL)
    message = error_of(path, ["sources.0.chat_template=nope.jinja"])
    assert "sources[0].chat_template" in message and str(tmp_path / "nope.jinja") in message


def test_paper_data_recipe_mirrors_the_paper():
    """recipes/fusechat3/data.yaml: the eight sources, the source models and their sampling, ArmoRM, the band."""
    from data_builders import available

    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "fusechat3" / "data.yaml")
    builders = [spec.builder for spec in r.prompts]
    assert builders == [
        "ultrafeedback",
        "magpie_pro_dpo",
        "helpsteer2",
        "openmathinstruct2",
        "leetcode",
        "self_oss_instruct",
        "alpaca_gpt4_zh",
        "magpie_qwen2_zh",
    ]
    assert set(builders) <= set(available())
    by_name = {s.name: s for s in r.sources}
    for name in ("gemma-2-27b", "mistral-large", "llama-3.1-70b"):
        s = by_name[name].sampling
        assert (s.temperature, s.top_p, s.n, s.n_for("code")) == (0.8, 0.95, 5, 8)
    qwen = by_name["qwen-2.5-72b"].sampling
    assert (qwen.temperature, qwen.top_p, qwen.repetition_penalty, qwen.n_for("zh")) == (0.7, 0.8, 1.05, 1)
    assert by_name["qwen-2.5-math-72b"].domains == ["math"]
    assert r.building.zh_source == "qwen-2.5-72b" and r.building.reward_gap == [0.01, 0.1]
    assert r.building.sft_fraction["instruction"] == 0.4
    # ArmoRM is loaded by our own class (fusechat3.scoring.armorm): no remote code.
    assert r.scoring.reward_model.model == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    assert not r.scoring.reward_model.trust_remote_code
    # The paper's details: code pairs have no band; the SFT:DPO ratio holds on the kept rows.
    assert r.building.gap_for("code") is None and r.building.split == "after_rules"
