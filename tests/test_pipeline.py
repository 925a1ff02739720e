"""The implicit-fusion pipeline end to end on the toy world, tiny sizes: real vLLM
sampling, real reward-model scores, real math-verify and sandbox checks, the building
rules, real TRL SFT and DPO, controls and evaluation; a finished run is a no-op.

The sources are sampled and evaluated with vLLM; the target's own samples and the evaluation of the trained
models use the transformers backend (`sampler.backend: hf`), which saves six engine starts (about 25 s of
`make test`) and runs the eval stage on both backends.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fusechat3.recipe import load_recipe
from fusechat3.run import Run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "toyworld" / "imf.yaml"

TINY = [
    "prompts.0.args.per_domain={math: 8, code: 8, instruction: 8, zh: 4}",
    "sampler.backend=hf",
    "sources.0.backend=vllm",
    "sources.1.backend=vllm",
    "sources.2.backend=vllm",
    "sources.0.sampling.n=2",
    "sources.1.sampling.n=2",
    "sources.2.sampling.n=2",
    # The target's own samples (role: target) for the WRPO set, on instruction prompts only.
    "sources.3.sampling.n=2",
    "sources.3.sampling.max_tokens=64",
    "sources.3.domains=[instruction]",
    "sampler.shard_size=10",
    "scoring.shard_size=40",
    # The band of the reward-judged domain (instruction; math and code have none): wide enough to keep pairs
    # for the DPO stage, narrow enough that some prompts have none in it (test_built_sets_follow_the_rules).
    "building.reward_gap=[0.3, 30.0]",
    "sft.max_steps=3",
    "sft.per_device_train_batch_size=4",
    "sft.logging_steps=1",
    "dpo.max_steps=2",
    "dpo.per_device_train_batch_size=4",
    "dpo.logging_steps=1",
    # WRPO as a stage of the run, on the target's own samples (the recipe's `target-own` source).
    "wrpo={max_steps: 2, per_device_train_batch_size: 4, logging_steps: 1, learning_rate: 1.0e-4, max_length: 256,"
    " gradient_checkpointing: false, save_strategy: 'no', report_to: none}",
    "controls.sources=[gpt2-chat, mistral-math]",
    "controls.parallel=2",  # two controls at once, each in its own process
    "eval.prompts.0.args.per_domain=3",
]


def _recipe(tmp: Path, extra: list[str] = ()):
    return load_recipe(RECIPE, [*TINY, f"run_dir={tmp}", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from fusechat3.stages import run_all

    run = Run(_recipe(tmp_path_factory.mktemp("run")))
    run_all(run)
    return run


def _weights(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_every_stage_wrote_its_outputs(finished_run):
    run = finished_run
    prompts = run.read("prompts")
    assert Counter(p["domain"] for p in prompts) == {"math": 8, "code": 8, "instruction": 8, "zh": 4}
    # Each source answered its domains with n responses per prompt; zh only by qwen2-code, once.
    samples = {s.name: run.read(f"sample/{s.name}") for s in run.recipe.sources}
    assert len(samples["mistral-math"]) == 24 * 2
    assert len(samples["qwen2-code"]) == 24 * 2 + 4 * 1
    keys = [(r["prompt_id"], r["model"], r["sample_idx"]) for rows in samples.values() for r in rows]
    assert len(keys) == len(set(keys))
    scores = run.read("score")
    assert len(scores) == len(keys)
    # Real checks ran: math and code verdicts come from math-verify and the sandbox.
    by_id = {p["prompt_id"]: p for p in prompts}
    verdicts = Counter((by_id[s["prompt_id"]]["domain"], s["verdict"]) for s in scores)
    assert verdicts[("math", "passed")] > 0 and verdicts[("code", "passed")] > 0
    # Summaries: per source, in the stage manifests and in summary.json files.
    sample_summary = json.loads((Path(run.dir.root) / "sample" / "summary.json").read_text())
    assert sample_summary["qwen2-code"]["samples"] == 24 * 2 + 4
    score_summary = json.loads((Path(run.dir.root) / "score" / "summary.json").read_text())
    assert set(score_summary) == {"mistral-math", "qwen2-code", "gpt2-chat", "target-own", "all"}
    assert score_summary["target-own"]["responses"] == 8 * 2  # instruction prompts only
    for name in ("mistral-math", "qwen2-code", "gpt2-chat"):
        figures = score_summary[name]
        assert figures["responses"] == len(samples[name])
        assert 0 <= figures["math_pass_rate"] <= 1 and 0 <= figures["code_pass_rate"] <= 1
        assert (
            figures["reward_quantiles"]["p10"]
            <= figures["reward_quantiles"]["p50"]
            <= figures["reward_quantiles"]["p90"]
        )
    # mistral-math is the math specialist: its pass rate is the best there.
    assert score_summary["mistral-math"]["math_pass_rate"] > score_summary["gpt2-chat"]["math_pass_rate"]
    # Every response that exists has a reward (truncated and empty ones included: flagged).
    by_key = {(r["prompt_id"], r["model"], r["sample_idx"]): r for rows in samples.values() for r in rows}
    for s in scores:
        sample = by_key[(s["prompt_id"], s["model"], s["sample_idx"])]
        assert sample["truncated"] == (sample["finish_reason"] == "length")
        assert sample["empty"] == (not sample["text"].strip())
        assert (s["truncated"], s["empty"]) == (sample["truncated"], sample["empty"])
        if sample["finish_reason"] != "error":
            assert s["reward"] is not None and s["reward_status"] == "ok"


def test_built_sets_follow_the_rules(finished_run):
    run = finished_run
    build = Path(run.dir.root) / "build"
    import pyarrow.parquet as pq

    sft = pq.read_table(build / "sft.parquet").to_pylist()
    dpo = pq.read_table(build / "dpo.parquet").to_pylist()
    assert sft, "no SFT rows"
    for row in sft:
        assert row["messages"][-1]["role"] == "assistant"
        if row["domain"] == "zh":
            assert row["model"] == "qwen2-code"
    assert all(r["domain"] != "zh" for r in dpo)
    scores = {(s["prompt_id"], s["model"], s["sample_idx"]): s for s in run.read("score")}
    # Each source's responses of each prompt, with their rewards: (prompt_id, model) -> {text: rewards}.
    responses: dict[tuple[str, str], dict[str, set]] = {}
    for source in run.recipe.sources:
        for sample in run.read(f"sample/{source.name}"):
            key = (sample["prompt_id"], sample["model"], sample["sample_idx"])
            texts = responses.setdefault(key[:2], {})
            texts.setdefault(sample["text"], set()).add(scores[key]["reward"])
    spec = run.recipe.building
    for row in dpo:  # chosen and rejected come from the same source, chosen scores higher
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert (
            row["score_chosen"] is None
            or row["score_rejected"] is None
            or row["score_chosen"] >= row["score_rejected"]
            or row["domain"] in ("math", "code")
        )
        # Both are responses of the row's source to this prompt, with the rewards the row gives them.
        own = responses.get((row["prompt_id"], row["model"]), {})
        assert row["score_chosen"] in own.get(row["chosen"][0]["content"], set()), row
        assert row["score_rejected"] in own.get(row["rejected"][0]["content"], set()), row
        # Where a band is set, the reward gap lies in it.
        band = spec.gap_for(row["domain"])
        if band is not None:
            gap = row["score_chosen"] - row["score_rejected"]
            assert band[0] - 1e-9 <= gap <= band[1] + 1e-9, (row["domain"], gap, band)
    # The band did its work: it dropped prompts, and kept the pairs of others.
    drops = run.stage("build").summary()["stats"]["drops"]["instruction"]
    assert drops.get("gap_below", 0) + drops.get("gap_above", 0) > 0, drops
    assert any(r["domain"] == "instruction" for r in dpo)
    assert "target-own" not in {r["model"] for r in sft + dpo}
    wrpo = pq.read_table(build / "wrpo.parquet").to_pylist()
    assert wrpo, run.stage("build").summary()
    for row in wrpo:  # source_chosen from a source; chosen and rejected are the target's own, ranked by reward
        assert row["domain"] == "instruction" and row["target_model"] == "target-own" and row["model"] != "target-own"
        assert row["score_chosen"] >= row["score_rejected"]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert row["source_chosen"][0]["role"] == "assistant"
    control = pq.read_table(build / "control-gpt2-chat.parquet").to_pylist()
    assert {r["model"] for r in control} <= {"gpt2-chat"}
    assert scores


def test_training_changed_the_target(finished_run):
    run = finished_run
    from fusechat3.recipe import resolve_model

    before = _weights(resolve_model("toyworld:target"))
    for stage in ("sft", "dpo", "wrpo", "controls/gpt2-chat", "controls/mistral-math"):
        after = _weights(str(Path(run.dir.root) / stage / "model"))
        changed = sum(not (before[k] == after[k]).all() for k in before if k in after)
        assert changed > 0, f"{stage} did not change the parameters"
    sft_steps = json.loads((Path(run.dir.root) / "sft" / "model" / "trainer_state.json").read_text())["global_step"]
    for name in ("gpt2-chat", "mistral-math"):  # trained in two processes at once (controls.parallel=2)
        state = json.loads((Path(run.dir.root) / "controls" / name / "model" / "trainer_state.json").read_text())
        assert sft_steps == state["global_step"] == 3  # controls get the same SFT budget
        assert run.stage(f"controls/{name}").done()
        # Each control's own log, written by the process that trained it: the trainer's log lines and the summary.
        text = (Path(run.dir.root) / "controls" / name / "log.txt").read_text()
        assert "fusechat3.training: step 3: {" in text and f"controls/{name} (" in text, text


def test_scoreboard(finished_run):
    board = json.loads((Path(finished_run.dir.root) / "eval" / "scoreboard.json").read_text())
    models = board["models"]
    for key in (
        "target_before",
        "target_sft",
        "target_dpo",
        "target_wrpo",
        "target_single_gpt2-chat",
        "mistral-math",
        "qwen2-code",
        "gpt2-chat",
    ):
        assert key in models, key
        assert set(models[key]) == {"math", "code", "instruction", "zh", "average"}
        assert 0.0 <= models[key]["average"] <= 1.0
    assert board["n"] == {"math": 3, "code": 3, "instruction": 3, "zh": 3}


def test_run_training_stages_take_lora_and_the_checkpoint_choice(finished_run, tmp_path):
    """A run's training stage takes what a training config takes: LoRA (merged), held-out eval files and the
    checkpoint choice; changing them re-runs that stage only."""
    import shutil

    from fusechat3 import stages

    copy = tmp_path / "copy"
    shutil.copytree(finished_run.dir.root, copy)
    options = [
        "sft.peft={r: 4, lora_alpha: 8, target_modules: all-linear}",
        "sft.save_strategy=steps",
        "sft.save_steps=1",
        "sft.eval_strategy=steps",
        "sft.eval_steps=1",
        "sft.select_checkpoint={metric: eval_loss, last: 2}",
        f"sft.eval_files=[{copy / 'build' / 'sft.parquet'}]",
    ]
    run = Run(_recipe(tmp_path, [f"run_dir={copy}", *options]))
    assert run.key("build") == finished_run.key("build") and run.key("sft") != finished_run.key("sft")
    stages.get("sft").run(run)
    out = run.output("sft", "model")
    assert (out / "adapter" / "adapter_config.json").is_file()  # the LoRA adapter, kept beside the merged model
    assert "lora" not in " ".join(_weights(str(out)))  # the model itself is merged: plain weights, vLLM loads it
    choice = json.loads((out / "checkpoint_choice.json").read_text())
    assert choice["metric"] == "eval_loss" and len(choice["candidates"]) == 2, choice


def test_rerun_is_a_no_op(finished_run):
    from fusechat3.stages import run_all

    root = Path(finished_run.dir.root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("manifest.json")}
    run_all(Run(finished_run.recipe))
    after = {p: p.stat().st_mtime_ns for p in root.rglob("manifest.json")}
    assert before == after
