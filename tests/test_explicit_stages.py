"""The explicit path as stages of a run, on the toy models: corpus -> represent/<model> -> teacher/<part>
-> fuse-train/<part>. The stored representations are exactly what `represent` computes; `--shard i/n`
workers add up to one stage; a represent run killed with SIGKILL at several points resumes to the rows
of an uninterrupted run; the teacher rows are well-formed distributions on the target's tokens; the
fusion training and its LM-only control train; pairwise fusion has one teacher per source; and bad
settings are one line each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusechat3.errors import RecipeError, UserError
from fusechat3.recipe import load_recipe
from fusechat3.run import Run, model_names
from fusechat3.stages import get as stage

SOURCES = ("mistral-math", "qwen2-code")


def _recipe(tmp: Path, name: str = "recipe.yaml", **explicit) -> Path:
    recipe = {
        "name": "explicit-test",
        "run_dir": str(tmp / "run"),
        "prompts": [
            {
                "builder": "toyworld",
                "args": {
                    "split": "fusion",
                    "per_domain": {"math": 4, "code": 3, "instruction": 4, "zh": 2},
                    "with_response": True,
                    "near_miss": 0.5,
                },
            }
        ],
        "sources": [{"name": s, "model": f"toyworld:{s}"} for s in SOURCES],
        "target": {"model": "toyworld:target"},
        "explicit": {"top_k": 5, "represent": {"batch_size": 3, "shard_size": 2}, **explicit},
        "fuse_train": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "report_to": "none"},
    }
    path = tmp / name
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def _run(path: Path, *overrides: str) -> Run:
    return Run(load_recipe(path, list(overrides)))


def _through(run: Run, last: str) -> None:
    from fusechat3.stages import run_all

    run_all(run, "prompts", last)


# --- corpus and represent ---------------------------------------------------------------


def test_represent_rows_are_the_models_representations(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.explicit.represent import from_row, represent
    from fusechat3.recipe import resolve_model

    run = _run(_recipe(tmp_path))
    _through(run, "represent")
    corpus = run.read("corpus")
    assert len(corpus) == 13 and all(c["messages"][-1]["role"] == "assistant" for c in corpus)
    assert run.stage("corpus").summary()["skipped"] == {}
    path = resolve_model("toyworld:qwen2-code")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    direct = represent(model, tok, [c["messages"] for c in corpus], k=5, batch_size=3)
    stored = run.read("represent/qwen2-code")
    assert [r["prompt_id"] for r in stored] == [c["prompt_id"] for c in corpus]
    for row, want in zip(stored, direct, strict=True):
        got = from_row(row)
        for key in ("ids", "mask", "top_ids"):
            np.testing.assert_array_equal(got[key], want[key])
        np.testing.assert_array_equal(got["spans"], want["spans"])
        np.testing.assert_allclose(got["top_logprobs"].astype(np.float32), want["top_logprobs"].astype(np.float32))
        assert got["ce"] == pytest.approx(float(want["ce"]), rel=1e-6)
    summary = run.stage("represent/qwen2-code").summary()
    assert summary["represented"] == 13 and summary["tokens"] == sum(len(d["ids"]) for d in direct)
    assert not run.dir.root.joinpath("represent", "target").exists()  # the target only for pairwise fusion


def test_corpus_counts_prompts_without_a_response(tmp_path):
    run = _run(_recipe(tmp_path))
    stage("prompts").run(run)
    rows = run.read("prompts")
    rows[0]["meta"] = json.dumps({"family": "x"})  # no reference response
    prompts = run.stage("prompts")
    summary = prompts.summary()
    import shutil

    shutil.rmtree(run.dir.root / "prompts")
    prompts = run.stage("prompts")
    prompts.write_shard("prompts", rows)
    prompts.finish(summary)
    stage("corpus").run(run)
    assert len(run.read("corpus")) == len(rows) - 1
    assert run.stage("corpus").summary()["skipped"] == {"no_response": 1}


def test_a_corpus_with_no_response_is_one_line(tmp_path):
    path = _recipe(tmp_path)
    run = _run(path, "prompts.0.args.with_response=false", "prompts.0.args.near_miss=0")
    stage("prompts").run(run)
    with pytest.raises(UserError, match="gives no conversation.*reference responses"):
        stage("corpus").run(run)


def test_shard_workers_add_up_to_one_represent_stage(tmp_path):
    from fusechat3.explicit.represent_stage import run_represent

    whole = _run(_recipe(tmp_path), f"run_dir={tmp_path / 'whole'}")
    _through(whole, "represent")
    split = _run(_recipe(tmp_path))
    _through(split, "corpus")
    for i in (1, 0):  # any order: the workers of a job array
        assert not split.stage("represent/mistral-math").done()
        run_represent(split, "mistral-math", (i, 2))
    assert split.stage("represent/mistral-math").done()
    assert split.read("represent/mistral-math") == whole.read("represent/mistral-math")
    with pytest.raises(UserError, match="no model named 'mistral' .*did you mean 'mistral-math'"):
        run_represent(split, "mistral")


def _shards_recorded(run_dir: Path, part: str) -> int:
    try:
        return len(json.loads((run_dir / "represent" / part / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_then_resume_gives_the_same_representations(tmp_path):
    path = _recipe(tmp_path)
    run = _run(path, "explicit.represent.shard_size=1")
    _through(run, "corpus")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    for k in (0, 1, 2, 2):  # right after shard k of this attempt is recorded (the next is in flight)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusechat3.cli", "represent", str(path), "--model", "qwen2-code"]
            + ["--set", "explicit.represent.shard_size=1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        start = _shards_recorded(run.dir.root, "qwen2-code")
        while proc.poll() is None and _shards_recorded(run.dir.root, "qwen2-code") < start + k:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, f"only {kills} runs were still going when killed"
    assert 0 < _shards_recorded(run.dir.root, "qwen2-code") < 13
    stage("represent").run(run, model="qwen2-code")
    reference = _run(path, "explicit.represent.shard_size=1", f"run_dir={tmp_path / 'reference'}")
    _through(reference, "corpus")
    stage("represent").run(reference, model="qwen2-code")
    assert run.read("represent/qwen2-code") == reference.read("represent/qwen2-code")


# --- teacher and fusion training ----------------------------------------------------------


def test_teacher_rows_are_distributions_on_the_target_tokens(tmp_path):
    from transformers import AutoTokenizer

    from fusechat3.explicit.represent import encode
    from fusechat3.recipe import resolve_model

    run = _run(_recipe(tmp_path, method="avgCE"))
    _through(run, "teacher")
    rows = run.read("teacher/all")
    corpus = {c["prompt_id"]: c for c in run.read("corpus")}
    tok = AutoTokenizer.from_pretrained(resolve_model("toyworld:target"))
    assert len(rows) == 13
    for r in rows:
        ids, labels = np.array(r["input_ids"]), np.array(r["labels"])
        np.testing.assert_array_equal(ids, encode(tok, corpus[r["prompt_id"]]["messages"])["ids"])
        fused_ids, probs = np.array(r["fused_ids"]), np.array(r["fused_probs"])
        assert fused_ids.shape == probs.shape == (len(ids), 5)
        predicts_label = np.flatnonzero(labels[1:] != -100)  # row t predicts token t + 1
        np.testing.assert_allclose(probs[predicts_label].sum(-1), 1.0, rtol=1e-5)
        assert (fused_ids[probs > 0] < len(tok)).all() and (fused_ids[probs > 0] >= 0).all()
    summary = run.stage("teacher/all").summary()
    assert summary["members"] == list(SOURCES) and summary["method"] == "avgCE"
    assert sum(summary["heaviest_source"].values()) == 13


def test_fuse_train_trains_the_fused_target_and_its_control(tmp_path):
    from safetensors.numpy import load_file

    from fusechat3.recipe import resolve_model

    run = _run(_recipe(tmp_path))
    _through(run, "fuse-train")
    assert [m for m in model_names(run.recipe) if m.startswith("target_")] == [
        "target_before", "target_fused", "target_lm_only"
    ]  # fmt: skip
    before = load_file(str(Path(resolve_model("toyworld:target")) / "model.safetensors"))
    weights = {}
    for part in ("all", "lm_only"):
        out = run.output("fuse-train", "model", part)
        args = json.loads((out / "trainer_state.json").read_text())
        assert args["global_step"] == 2
        weights[part] = load_file(str(out / "model.safetensors"))
        assert any(not np.allclose(weights[part][k], before[k]) for k in before), f"{part}: nothing changed"
    # The control differs from the fused target only by fusion_lambda: 1, so their weights differ.
    assert any(not np.allclose(weights["all"][k], weights["lm_only"][k]) for k in before)
    import torch

    lam = {p: torch.load(run.output("fuse-train", "model", p) / "training_args.bin", weights_only=False).fusion_lambda
           for p in ("all", "lm_only")}  # fmt: skip
    assert lam == {"all": 0.9, "lm_only": 1.0}

    # The same training from a training config file (what `accelerate launch -m fusechat3.training.fusion` reads).
    from fusechat3.cli import main

    config = tmp_path / "fuse_train.yaml"
    teacher = run.output("teacher", "rows", "all")
    config.write_text(
        json.dumps(
            {
                "model": "toyworld:target",
                "train_files": [str(teacher)],
                "output_dir": str(tmp_path / "from-config"),
                "fuse_train": {"max_steps": 1, "per_device_train_batch_size": 4, "report_to": "none"},
            }
        )
    )
    assert main(["fuse-train", str(config)]) == 0
    assert json.loads((tmp_path / "from-config" / "trainer_state.json").read_text())["global_step"] == 1


def test_pairwise_fusion_has_one_teacher_per_source(tmp_path):
    run = _run(_recipe(tmp_path, pairwise=True, control=False))
    _through(run, "teacher")
    assert run.parts("represent") == ["represent/mistral-math", "represent/qwen2-code", "represent/target"]
    assert run.parts("teacher") == ["teacher/mistral-math", "teacher/qwen2-code"]
    for src in SOURCES:
        summary = run.stage(f"teacher/{src}").summary()
        assert summary["members"] == ["target", src]
        assert summary["vocabulary"]["target"] == {"identity": summary["vocabulary"]["target"]["identity"]}
        assert len(run.read(f"teacher/{src}")) == 13
    assert [m for m in model_names(run.recipe) if m.startswith("target_f")] == [
        "target_fused_mistral-math", "target_fused_qwen2-code"
    ]  # fmt: skip


# --- settings ---------------------------------------------------------------------------


def test_explicit_settings_errors_are_one_line(tmp_path):
    path = _recipe(tmp_path)
    with pytest.raises(
        RecipeError,
        match=r"key 'explicit.sources\[0\]' names no source: 'qwen' \(choose from: mistral-math, qwen2-code\)",
    ):
        load_recipe(path, ["explicit.sources=[qwen]"])
    with pytest.raises(RecipeError, match="explicit.corpus.*needs scoring"):
        load_recipe(path, ["explicit.corpus=sft"])
    with pytest.raises(RecipeError, match="explicit.method"):
        load_recipe(path, ["explicit.method=maxCE"])
    run = _run(path, "fuse_train.fusion_lambda=2")
    with pytest.raises(RecipeError, match="fuse_train: FusionConfig rejects these settings: fusion_lambda"):
        stage("fuse-train").check(run)
    # An implicit-only stage of this recipe is off, with the reason.
    with pytest.raises(UserError, match="stage 'sft' is off"):
        stage("sft").run(run)


def test_the_control_does_not_depend_on_fusion_lambda(tmp_path):
    path = _recipe(tmp_path)
    a, b = _run(path), _run(path, "fuse_train.fusion_lambda=0.5")
    assert a.key("fuse-train/lm_only") == b.key("fuse-train/lm_only")
    assert a.key("fuse-train/all") != b.key("fuse-train/all")
    assert a.key("fuse-train/lm_only") != _run(path, "fuse_train.learning_rate=0.01").key("fuse-train/lm_only")


def test_report_and_push_of_an_explicit_only_recipe_are_one_line(tmp_path, capsys):
    from fusechat3.cli import main

    path = _recipe(tmp_path)
    for command in (["report", str(path)], ["push", str(path), "--local-dir"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"`fusechat3 {command[0]}` works on the implicit path's built sets" in err


@pytest.mark.slow
def test_the_vllm_backend_through_the_stage_gives_the_hf_rows(tmp_path):
    """`represent.backend: vllm` with a source's own engine options, against the hf backend's rows."""
    from fusechat3.explicit.represent import from_row

    path = _recipe(tmp_path)
    hf = _run(path, f"run_dir={tmp_path / 'hf'}")
    _through(hf, "corpus")
    stage("represent").run(hf, model="qwen2-code")
    vl = _run(path, "explicit.represent.backend=vllm", "sources.1.engine={max_model_len: 512}")
    _through(vl, "corpus")
    stage("represent").run(vl, model="qwen2-code")
    for a, b in zip(hf.read("represent/qwen2-code"), vl.read("represent/qwen2-code"), strict=True):
        a, b = from_row(a), from_row(b)
        assert (a["ids"] == b["ids"]).all() and (a["top_ids"] == b["top_ids"]).mean() > 0.99
        np.testing.assert_allclose(
            b["top_logprobs"].astype(np.float32), a["top_logprobs"].astype(np.float32), atol=2e-3
        )
        assert float(b["ce"]) == pytest.approx(float(a["ce"]), rel=1e-4, abs=1e-6)


def test_plain_text_corpus_labels_every_token(tmp_path):
    """`render: plain` (FuseLLM's continual training on text): prompts without responses are texts, written
    without a chat template, with every token after BOS labelled; the teacher covers them."""
    from transformers import AutoTokenizer

    from fusechat3.explicit.represent import encode, from_row
    from fusechat3.recipe import resolve_model

    path = _recipe(tmp_path, render="plain")
    run = _run(path, "prompts.0.args.with_response=false", "prompts.0.args.near_miss=0")
    _through(run, "teacher")
    corpus = run.read("corpus")
    assert len(corpus) == 13 and all(len(c["messages"]) == 1 for c in corpus)
    tok = AutoTokenizer.from_pretrained(resolve_model("toyworld:qwen2-code"))
    for row, conv in zip(run.read("represent/qwen2-code"), corpus, strict=True):
        rep = from_row(row)
        enc = encode(tok, conv["messages"], plain=True)
        assert enc["text"] == (tok.bos_token or "") + conv["messages"][0]["content"]
        np.testing.assert_array_equal(rep["ids"], enc["ids"])
        assert rep["mask"][len(tok(tok.bos_token or "", add_special_tokens=False)["input_ids"]) :].all()
    assert len(run.read("teacher/all")) == 13


@pytest.mark.slow
def test_fusion_training_under_accelerate_launch_with_two_processes(tmp_path):
    """`accelerate launch -m fusechat3.training.fusion` with two CPU processes (DDP over gloo) trains and saves."""
    run = _run(_recipe(tmp_path))
    _through(run, "teacher")
    config = tmp_path / "fuse_train.yaml"
    out = tmp_path / "launched"
    config.write_text(
        json.dumps(
            {
                "model": "toyworld:target",
                "train_files": [str(run.output("teacher", "rows", "all"))],
                "output_dir": str(out),
                "fuse_train": {"max_steps": 2, "per_device_train_batch_size": 2, "report_to": "none"},
            }
        )
    )
    accelerate = Path(sys.executable).with_name("accelerate")
    done = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
        + ["--dynamo_backend", "no", "-m", "fusechat3.training.fusion", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "model.safetensors").is_file()


def test_the_teacher_summary_says_how_each_source_id_was_mapped(tmp_path):
    from transformers import AutoTokenizer

    from fusechat3.recipe import resolve_model

    run = _run(_recipe(tmp_path))
    _through(run, "teacher")
    vocab = run.stage("teacher/all").summary()["vocabulary"]
    for src in SOURCES:
        size = len(AutoTokenizer.from_pretrained(resolve_model(f"toyworld:{src}")))
        how = vocab[src]
        assert how["exact"] + how["statistics"] + how["mined"] == size and how["texts_counted"] == 13
        assert how["exact"] > 0 and how["pairs_counted"] > 0
