"""The `sample` stage on the toy models: over-long prompts in the middle of a shard never
shift outputs, a run killed with SIGKILL at many points resumes to exactly the rows of
an uninterrupted run, `--shard i/n` workers add up to one dataset, the summary, and one
clear line for each kind of bad input.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_builders.toyworld import build as toy_prompts
from fusechat3.recipe import load_recipe
from fusechat3.run import Run

LONG = "the quick brown fox jumps over the lazy dog " * 30  # ~ 300+ tokens: over 128 for every toy tokenizer


def _write_prompts(path: Path, n: int, long_at: tuple[int, ...] = ()) -> list[str]:
    """`n` toy math prompts as a chat JSONL file, with over-long prompts inserted at `long_at`."""
    texts = [r["messages"][-1]["content"] for r in toy_prompts("fusion", {"math": n, "code": 0})][:n]
    for k, pos in enumerate(long_at):
        texts.insert(pos, f"{k}: {LONG}")
    with path.open("w") as f:
        for t in texts:
            f.write(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n")
    return texts


def _recipe_file(tmp: Path, backend: str, n_prompts: int, long_at: tuple[int, ...] = (), shard_size: int = 4) -> Path:
    _write_prompts(tmp / "prompts.jsonl", n_prompts, long_at)
    engine = {"max_model_len": 128} if backend == "vllm" else {"max_model_len": 128, "batch_size": 8}
    recipe = {
        "name": "sample-test",
        "run_dir": str(tmp / "run"),
        "prompts": [{"builder": "chat", "args": {"path": str(tmp / "prompts.jsonl"), "domain": "instruction"}}],
        "sources": [
            {
                "name": "mm",
                "model": "toyworld:mistral-math",
                "sampling": {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 16, "seed": 3},
            }
        ],
        "sampler": {"backend": backend, "engine": engine, "shard_size": shard_size},
        "scoring": {"reward_model": {"model": "toyworld:reward"}},
        "target": {"model": "toyworld:target"},
    }
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def _rows(run: Run, source: str = "mm") -> list[tuple]:
    rows = run.read(f"sample/{source}")
    return sorted(
        (r["prompt_id"], r["sample_idx"], r["text"], r["finish_reason"], r["num_tokens"], r["sampling_key"])
        for r in rows
    )


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fusechat3.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


# --- over-long prompts in the middle of a shard ---------------------------------------


def test_long_prompts_are_skipped_and_never_shift_outputs(tmp_path: Path) -> None:
    from fusechat3.recipe import resolve_model
    from fusechat3.sampling import GenParams, get_sampler
    from fusechat3.sampling.base import derive_seed
    from fusechat3.stages import get as stage_fn

    # 10 prompts, shard size 4: long ones at 1 and 2 (mid-shard 0) and at 6 (mid-shard 1).
    run = Run(load_recipe(_recipe_file(tmp_path, "vllm", 10, long_at=(1, 2, 6))))
    stage_fn("prompts").run(run)
    stage_fn("sample").run(run)
    prompts = run.read("prompts")
    long_ids = {p["prompt_id"] for p in prompts if LONG in p["messages"][-1]["content"]}
    assert len(prompts) == 13 and len(long_ids) == 3

    samples = run.read("sample/mm")
    assert {s["prompt_id"] for s in samples} == {p["prompt_id"] for p in prompts} - long_ids
    summary = json.loads((run.dir.root / "sample" / "summary.json").read_text())["mm"]
    assert summary["skipped"] == {"prompt_too_long": 3}
    assert set(summary["skipped_prompt_ids"]["prompt_too_long"]) == long_ids
    assert summary["prompts"] == 13 and summary["samples"] == 20 == len(samples)
    assert summary["tokens"] == sum(s["num_tokens"] for s in samples) > 0

    # Each prompt alone, with its own seed, gives exactly the samples stored under its id.
    sampler = get_sampler("vllm", resolve_model("toyworld:mistral-math"), max_model_len=128)
    try:
        params = GenParams(n=2, temperature=0.8, top_p=0.95, max_tokens=16, seed=3)
        for p in prompts:
            if p["prompt_id"] in long_ids:
                continue
            alone = sampler.generate([p["messages"]], params, seeds=[derive_seed(3, p["prompt_id"])])[0]
            stored = sorted((s for s in samples if s["prompt_id"] == p["prompt_id"]), key=lambda s: s["sample_idx"])
            assert [(s["text"], s["num_tokens"]) for s in stored] == [(c.text, c.num_tokens) for c in alone]
    finally:
        sampler.close()


# --- SIGKILL at many points, then resume ----------------------------------------------


def _shards_recorded(run_dir: Path) -> int:
    try:
        manifest = json.loads((run_dir / "sample" / "mm" / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return len(manifest["shards"])


def _check_resume_after_kills(tmp_path: Path, backend: str, kill_after_shards: list[int], random_kills: int) -> None:
    from fusechat3.stages import get as stage_fn

    recipe = _recipe_file(tmp_path, backend, 28, long_at=(5,), shard_size=3)  # 29 prompts, 10 shards
    run = Run(load_recipe(recipe))
    stage_fn("prompts").run(run)
    run_dir = run.dir.root
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    plan = [("shards", k) for k in kill_after_shards] + [("seconds", None)] * random_kills
    for how, k in plan:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusechat3.cli", "sample", str(recipe)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if how == "shards":  # right after shard k is recorded (the next one is in flight)
            start = _shards_recorded(run_dir)
            while proc.poll() is None and _shards_recorded(run_dir) < start + k:
                time.sleep(0.02)
        else:  # at a random moment: model loading, sampling, writing
            time.sleep(rng.uniform(0.5, 8.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= len(plan) - 1, f"only {kills} runs were still going when killed: the run finished too early"
    done = _cli("sample", str(recipe))
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = _rows(run)

    # The same recipe, never interrupted, in another run directory.
    reference = Run(load_recipe(recipe, [f"run_dir={tmp_path / 'reference'}"]))
    stage_fn("prompts").run(reference)
    stage_fn("sample").run(reference)
    expected = _rows(reference)
    assert len(expected) == 28 * 2
    assert len({(r[0], r[1]) for r in resumed}) == len(resumed)  # no duplicates
    assert resumed == expected  # no gaps, nothing different
    summary = run.stage("sample/mm").summary()
    assert summary["samples"] == 56 and summary["skipped"] == {"prompt_too_long": 1}


def test_sigkill_at_any_point_resumes_to_the_same_rows_hf(tmp_path: Path) -> None:
    # Five killed processes (each starts Python, torch and the model: ~8 s of `make test` apiece); the vLLM test
    # (`slow`) kills six.
    _check_resume_after_kills(tmp_path, "hf", kill_after_shards=[0, 1, 2], random_kills=2)


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_rows_vllm(tmp_path: Path) -> None:
    _check_resume_after_kills(tmp_path, "vllm", kill_after_shards=[0, 1, 2, 2, 3], random_kills=1)


# --- --shard i/n workers ----------------------------------------------------------------


def test_shard_workers_add_up_to_one_dataset(tmp_path: Path, capsys: pytest.CaptureFixture, caplog) -> None:
    from fusechat3.sampling.stage import run_sample
    from fusechat3.stages import get as stage_fn

    caplog.set_level("INFO", logger="fusechat3.progress")
    recipe = _recipe_file(tmp_path, "hf", 10, shard_size=2)  # 5 shards
    whole = Run(load_recipe(recipe, [f"run_dir={tmp_path / 'whole'}"]))
    stage_fn("prompts").run(whole)
    stage_fn("sample").run(whole)

    split = Run(load_recipe(recipe))
    stage_fn("prompts").run(split)
    workers_done: set[int] = set()
    for i in (2, 0, 1):  # any order: separate workers of a job array
        assert not split.stage("sample/mm").done()
        run_sample(split, "mm", (i, 3))
        workers_done.add(i)
        written = {int(s.removeprefix("shard-")) for s in split.stage("sample/mm").shards()}
        assert written == {k for k in range(5) if k % 3 in workers_done}
    assert split.stage("sample/mm").done()
    assert _rows(split) == _rows(whole)
    out = capsys.readouterr()
    # The progress: stderr is no terminal under pytest, so a line (through logging) instead of a bar.
    progress = [r.getMessage() for r in caplog.records if r.name == "fusechat3.progress"]
    assert progress and all(m.startswith("sample/mm: ") and " prompts " in m and "tok/s]" in m for m in progress)
    assert "generated tokens" in out.out and "tokens/s" in out.out  # the summary table
    summary = json.loads((split.dir.root / "sample" / "summary.json").read_text())["mm"]
    assert summary["samples"] == 20 and summary["prompts"] == 10 and summary["tokens_per_s"] > 0


# --- bad input: one clear line each -----------------------------------------------------


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fusechat3: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path, "vllm", 3)
    line = _one_line_error(_cli("sample", str(recipe), "--source", "mn"))
    assert "no source named 'mn' (choose from: mm)" in line

    assert _cli("prompts", str(recipe)).returncode == 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    line = _one_line_error(
        _cli("sample", str(recipe), "--set", "sources.0.backend=openai", "--set", f"sources.0.engine.base_url={url}")
    )
    assert f"cannot reach {url}" in line

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    line = _one_line_error(_cli("prompts", str(recipe)))
    assert "no column(s) ['messages'] (found: ['prompt'])" in line and "messages_field" in line

    rows = [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "user", "content": "  "}]}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _one_line_error(_cli("prompts", str(recipe)))
    assert "prompts.jsonl: row 1" in line and "the user message is empty" in line

    line = _one_line_error(_cli("sample", str(recipe), "--set", "sources.0.chat_template=nope.jinja"))
    assert "sources[0].chat_template" in line and "nope.jinja" in line
