"""The sample, score and represent stages on Ray (`fusechat3.ray_exec`), on a local Ray instance with 2 CPUs: the
same rows as the local path (real vLLM engines in two actors; the reward model and math check in an actor, the code
sandbox as Ray CPU tasks; a model's top-k log-probabilities in two actors), and a driver killed with SIGKILL
part-way resumes at its shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fusechat3.recipe import load_recipe  # noqa: E402
from fusechat3.run import Run  # noqa: E402
from fusechat3.sampling.stage import run_sample  # noqa: E402
from fusechat3.stages import get as stage_fn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module (as a user's `ray start --head` would be); its GCS address."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _recipe(tmp: Path, name: str, backend: str, n: int, shard_size: int) -> Path:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"Write the words in capital letters: cat dog {i}"}]})
            + "\n"
            for i in range(n)
        )
    )
    engine = {"max_model_len": 128} if backend == "vllm" else {"max_model_len": 128, "batch_size": 4}
    recipe = {
        "name": name,
        "run_dir": str(tmp / name),
        "prompts": [{"builder": "chat", "args": {"path": str(prompts), "domain": "instruction"}}],
        "sources": [
            {
                "name": "mm",
                "model": "toyworld:mistral-math",
                "sampling": {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 16, "seed": 5},
            }
        ],
        "sampler": {"backend": backend, "engine": engine, "shard_size": shard_size},
        "scoring": {"reward_model": {"model": "toyworld:reward"}},
        "target": {"model": "toyworld:target"},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _sample(path: Path, *overrides: str, ray_address: str | None = None) -> list[dict]:
    run = Run(load_recipe(path, list(overrides)))
    stage_fn("prompts").run(run)
    run_sample(run, ray=ray_address)
    return run.read("sample/mm")


@pytest.mark.slow  # ~40 s with the local Ray's start: `make test` stays under its 10 minutes on 2 cores
def test_ray_gives_the_local_rows_hf(tmp_path: Path, cluster: str) -> None:
    """The fast check of every run: the transformers backend in two actors, the rows of this process's."""
    local = _sample(_recipe(tmp_path, "local", "hf", 8, shard_size=2))
    on_ray = _sample(_recipe(tmp_path, "on-ray", "hf", 8, shard_size=2), "sampler.ray={replicas: 2}")
    assert len(local) == 16 and on_ray == local


@pytest.mark.slow  # two vLLM engines on Ray and one here: ~50 s
def test_ray_gives_the_local_rows(tmp_path: Path, cluster: str) -> None:
    local = _sample(_recipe(tmp_path, "local", "vllm", 10, shard_size=3))
    on_ray = _sample(_recipe(tmp_path, "on-ray", "vllm", 10, shard_size=3), "sampler.ray={replicas: 2}")
    assert len(local) == 20 and on_ray == local  # 4 shards over two actors, each its own vLLM engine
    manifest = json.loads((tmp_path / "on-ray" / "sample" / "mm" / "manifest.json").read_text())
    assert manifest["finished"] and sorted(manifest["shards"]) == [f"shard-{k:05d}" for k in range(4)]


@pytest.mark.slow  # ~45 s: two processes start, each with an actor that loads the model
def test_a_killed_ray_driver_resumes_at_its_shards(tmp_path: Path, cluster: str) -> None:
    """SIGKILL the `fusechat3 sample --ray` process once its first shard is written; the rerun samples only the
    missing shards and the rows are those of an uninterrupted local run."""
    recipe = _recipe(tmp_path, "killed", "hf", 12, shard_size=2)
    folder = tmp_path / "killed" / "sample" / "mm"
    stage_fn("prompts").run(Run(load_recipe(recipe)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusechat3.cli", "sample", str(recipe), "--ray", cluster],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not list(folder.glob("shard-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in folder.glob("shard-*.parquet"))
    assert 1 <= len(written) < 6, written  # killed part-way
    assert not json.loads((folder / "manifest.json").read_text())["finished"]
    before = {name: (folder / name).stat().st_mtime_ns for name in written}
    resumed = _sample(recipe, ray_address=cluster)
    assert sorted(p.name for p in folder.glob("shard-*.parquet")) == [f"shard-{k:05d}.parquet" for k in range(6)]
    assert {name: (folder / name).stat().st_mtime_ns for name in written} == before  # kept, not sampled again
    assert resumed == _sample(_recipe(tmp_path, "uninterrupted", "hf", 12, shard_size=2))


@pytest.mark.slow  # ~35 s: a reward model in an actor and here
def test_the_score_stage_on_ray_gives_the_local_rows(tmp_path: Path, cluster: str, caplog) -> None:
    """Reward model and math check in a Ray actor (one thread), the code sandbox as Ray CPU tasks (the cluster's
    second CPU): the same Score rows as in this process (two threads), the rewards equal up to float32 rounding
    (another thread count sums in another order)."""
    import logging
    import shutil

    from fusechat3.scoring.stage import run_score

    recipe = load_recipe(
        ROOT / "recipes" / "toyworld" / "imf.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            "prompts=[{builder: toyworld, args: {split: fusion, per_domain: {math: 5, code: 5, instruction: 5, zh: 0}}}]",
            "sources=[{name: m, model: 'toyworld:mistral-math', sampling: {n: 2, max_tokens: 64}}]",
            "sampler={backend: hf, engine: {max_model_len: 512, batch_size: 8}}",
            "building.zh_source=m",
            "wrpo=null",
            "scoring.shard_size=8",
        ],
    )
    run = Run(recipe)
    stage_fn("prompts").run(run)
    run_sample(run)
    run_score(run)
    local = run.read("score")
    assert len(local) == 30 and {r["verdict"] for r in local} - {"unchecked"}  # math and code were checked
    shutil.rmtree(tmp_path / "run" / "score")
    with caplog.at_level(logging.INFO, logger="fusechat3.events"):
        run_score(Run(recipe), ray=cluster)
    assert "score: code sandbox as Ray CPU tasks" in caplog.messages
    on_ray = Run(recipe).read("score")
    assert [{**r, "reward": None} for r in on_ray] == [{**r, "reward": None} for r in local]
    assert [r["reward"] for r in on_ray] == pytest.approx([r["reward"] for r in local], rel=1e-5)
    manifest = json.loads((tmp_path / "run" / "score" / "manifest.json").read_text())
    assert manifest["finished"] and len(manifest["shards"]) == 4


@pytest.mark.slow  # a few seconds on the module's Ray
def test_sandbox_batches_as_ray_cpu_tasks_give_the_local_verdicts(cluster: str) -> None:
    """`run_tests_many` with `fan_out=cpu_tasks`: each batch runs in a Ray worker process (not this one), and every
    verdict (pass, failed test, timeout, static checks) is the one the local pool gives."""
    from fusechat3.ray_exec import cpu_tasks
    from fusechat3.scoring.code import run_tests_many

    assert os.getpid() not in cpu_tasks(lambda: os.getpid(), [(), ()])
    jobs = [
        ("def f(x):\n    return x + 1", ["assert f(1) == 2"]),
        ("def f(x):\n    return x", ["assert f(1) == 2"]),
        ("def f(x):\n    while True: pass", ["assert f(1) == 2"]),
        ("def f(x) return", ["assert f(1) == 2"]),
        ("def g(x):\n    return x * 2", ["assert g(2) == 4", "assert g(0) == 0"]),
    ] * 3
    local = run_tests_many(jobs, timeout_s=2, batch_size=4)
    assert [v for _, v in local[:5]] == ["passed", "test_failed", "timeout", "syntax_error", "passed"]
    assert run_tests_many(jobs, timeout_s=2, batch_size=4, fan_out=cpu_tasks) == local


@pytest.mark.slow  # ~30 s: a toy model loaded in two actors and here
def test_represent_on_ray_gives_the_local_representations(tmp_path: Path, cluster: str) -> None:
    """The explicit path's represent stage, the transformers backend in two Ray actors (`explicit.represent.ray`):
    the same shards, token ids, spans, masks and top-k ids as in this process; the log-probabilities and
    cross-entropies equal up to float32 rounding (one thread there, two here)."""
    import numpy as np

    from fusechat3.explicit.represent import from_row

    def represented(name: str, *overrides: str) -> list[dict]:
        recipe = load_recipe(
            ROOT / "recipes" / "toyworld" / "explicit.yaml",
            [
                f"run_dir={tmp_path / name}",
                "prompts.0.args.per_domain={math: 3, code: 3, instruction: 3, zh: 1}",
                "sources=[{name: qc, model: 'toyworld:qwen2-code'}]",
                "explicit.represent={backend: hf, batch_size: 4, shard_size: 3, max_length: 512}",
                *overrides,
            ],
        )
        run = Run(recipe)
        for name_ in ("prompts", "corpus", "represent"):
            stage_fn(name_).run(run)
        return run.read("represent/qc")

    local = represented("local")
    on_ray = represented("on-ray", "explicit.represent.ray={replicas: 2}")
    assert len(local) == 10 and [r["prompt_id"] for r in on_ray] == [r["prompt_id"] for r in local]
    for a, b in zip(on_ray, local, strict=True):
        ra, rb = from_row(a), from_row(b)
        for name in ("ids", "spans", "mask", "turns", "top_ids"):
            assert np.array_equal(ra[name], rb[name]), name
        np.testing.assert_allclose(ra["top_logprobs"], rb["top_logprobs"], rtol=1e-4, atol=1e-5)
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-5)
    manifest = json.loads((tmp_path / "on-ray" / "represent" / "qc" / "manifest.json").read_text())
    assert manifest["finished"] and len(manifest["shards"]) == 4


def test_running_on_ray_changes_no_stage_key(tmp_path: Path) -> None:
    """Moving a run to Ray (or off it) must not redo a finished stage: the Ray settings are in no stage key."""
    from fusechat3.stages import stages

    def keys(*overrides: str, recipe: str = "imf.yaml") -> dict[str, str]:
        run = Run(load_recipe(ROOT / "recipes" / "toyworld" / recipe, [f"run_dir={tmp_path}", *overrides]))
        names = [
            f"{st.name}/{part}" if part else st.name
            for st in stages().values()
            if st.enabled(run.recipe)
            for part in (st.parts(run.recipe) if st.parts else [None])
        ]
        return {name: run.key(name) for name in names}

    plain = keys()
    assert len(plain) > 10
    assert (
        keys("sampler.ray={replicas: 2}", "sources.0.ray={replicas: 3, gpus_per_replica: 1}", "scoring.ray={}") == plain
    )
    explicit = keys(recipe="explicit.yaml")
    assert "represent/mistral-math" in explicit
    assert keys(
        "explicit.represent.ray={replicas: 2}", "sources.1.ray={gpus_per_replica: 2}", recipe="explicit.yaml"
    ) == (explicit)
