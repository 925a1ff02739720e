"""How the eval stage samples each benchmark: `eval.sampling`, FuseEval's presets and `eval.sampling_per_benchmark`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusechat3.evaluation.stage import _generate, _settings
from fusechat3.recipe import load_recipe
from fusechat3.run import Run
from fusechat3.sampling.base import Completion

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "toyworld" / "imf.yaml"


def test_a_benchmarks_settings_come_from_the_preset_then_the_recipe() -> None:
    recipe = load_recipe(
        RECIPE, ["eval.preset=fuseeval-llama3", "eval.sampling_per_benchmark={alpaca_eval: {max_tokens: 1000}}"]
    )
    alpaca = recipe.eval.params_for("alpaca_eval")
    assert (alpaca.temperature, alpaca.top_p, alpaca.presence_penalty, alpaca.frequency_penalty) == (0.6, 0.9, 0.1, 0.1)
    assert alpaca.max_tokens == 1000  # the recipe's own key wins over the preset's 4096
    assert recipe.eval.params_for("gsm8k").greedy and recipe.eval.params_for("gsm8k").max_tokens == 2048
    assert recipe.eval.params_for("math") == recipe.eval.sampling  # not in the preset: eval.sampling as it is
    qwen = load_recipe(RECIPE, ["eval.preset=fuseeval-qwen2.5"]).eval.params_for("alpaca_eval")
    assert (qwen.temperature, qwen.top_p, qwen.top_k, qwen.repetition_penalty) == (0.7, 0.8, 20, 1.05)


def test_bad_benchmark_settings_are_one_line() -> None:
    from fusechat3.errors import RecipeError

    with pytest.raises(RecipeError, match=r"sampling_per_benchmark\.gsm8k\.temprature: Extra inputs are not permitted"):
        load_recipe(RECIPE, ["eval.sampling_per_benchmark={gsm8k: {temprature: 0.5}}"])
    with pytest.raises(RecipeError, match=r"eval.*preset"):
        load_recipe(RECIPE, ["eval.preset=fuseeval-llama4"])


class Recorder:
    """A sampler that answers each prompt with its settings' temperature and records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def generate(self, conversations, params):
        self.calls.append((len(conversations), params.temperature))
        return [
            [Completion(text=f"{params.temperature} {c[-1]['content']}", finish_reason="stop", num_tokens=2)]
            for c in conversations
        ]


def test_prompts_with_the_same_settings_go_in_one_call() -> None:
    def prompt(i: int, bench: str) -> dict:
        return {
            "prompt_id": f"p{i}",
            "domain": "x",
            "messages": [{"role": "user", "content": f"q{i}"}],
            "meta": json.dumps({"benchmark": bench}),
        }

    prompts = [prompt(0, "gsm8k"), prompt(1, "alpaca_eval"), prompt(2, "math500"), prompt(3, "alpaca_eval")]
    spec = load_recipe(RECIPE, ["eval.preset=fuseeval-gemma2"]).eval
    sampler = Recorder()
    outs = _generate(sampler, spec, prompts)
    assert [o[0].text for o in outs] == ["0.0 q0", "0.5 q1", "0.0 q2", "0.5 q3"]  # in the prompts' order
    assert sorted(sampler.calls) == [(2, 0.0), (2, 0.5)]
    toy = load_recipe(RECIPE).eval
    sampler = Recorder()
    _generate(sampler, toy, [prompt(i, b) for i, b in enumerate(["code", "math", "zh"])])
    assert sampler.calls == [(3, 0.0)]  # the toy world: one call, as before per-benchmark settings existed


def test_unset_new_eval_keys_leave_the_stage_key_alone(tmp_path: Path) -> None:
    plain = _settings(Run(load_recipe(RECIPE, [f"run_dir={tmp_path}"])), "target_before")["eval"]
    assert not {"llm_judge", "preset", "sampling_per_benchmark"} & set(plain)
    assert "presence_penalty" not in plain["sampling"]
    preset = _settings(
        Run(load_recipe(RECIPE, [f"run_dir={tmp_path}", "eval.preset=fuseeval-llama3"])), "target_before"
    )
    assert preset["eval"]["preset"] == "fuseeval-llama3"


def test_an_evaluation_only_recipe(tmp_path: Path) -> None:
    """No prompts, sources, scoring or explicit: `fusechat3 run` runs the eval stage alone, on target_before and the
    models of eval.models; a fusion recipe still needs its prompts and sources."""
    from fusechat3.errors import RecipeError
    from fusechat3.stages import run_all

    recipe = load_recipe(
        ROOT / "recipes" / "eval" / "toyworld.yaml",
        [
            f"run_dir={tmp_path}",
            "eval.prompts=[{builder: toyworld, args: {split: eval, per_domain: 1}}]",
            "eval.models={chat: 'toyworld:gpt2-chat'}",
            "sampler={backend: hf, engine: {max_model_len: 512}}",  # faster to start than vLLM, same stage
        ],
    )
    run_all(Run(recipe))
    board = json.loads((tmp_path / "eval" / "scoreboard.json").read_text())
    assert list(board["models"]) == ["target_before", "chat"] and board["n"] == {d: 1 for d in board["n"]}
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["eval"]  # no other stage ran
    assert (tmp_path / "eval" / "scoreboard.md").read_text().startswith("| model |")
    with pytest.raises(RecipeError, match=r"key 'sources' is empty: a fusion recipe needs at least one entry"):
        load_recipe(RECIPE, ["sources=[]"])
    with pytest.raises(RecipeError, match=r"or only eval:"):
        load_recipe(ROOT / "recipes" / "eval" / "toyworld.yaml", ["eval=null"])
