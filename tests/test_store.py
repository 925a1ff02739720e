"""The run directory: atomic parquet shards, manifest, resume, stale settings moved aside."""

from __future__ import annotations

import json
import logging
import multiprocessing

import pytest

from fusechat3 import store
from fusechat3.schema import make_prompt, make_sample, make_score
from fusechat3.store import RunDir, StoreError

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2? ünïcødé"}]


def rows(shard: int, n: int = 3) -> list[dict]:
    return [{"prompt_id": f"p{shard}-{i}", "value": shard * 10 + i} for i in range(n)]


def test_round_trip_keeps_values_and_types_exactly(tmp_path):
    stage = RunDir(tmp_path / "run").stage("mixed", "k")
    written = [
        {
            "s": "text\nwith newline",
            "i": 3,
            "f": 0.25,
            "b": True,
            "none": None,  # null in every row of the shard
            "strs": ["a", "b"],
            "maybe_strs": None,
            "msgs": MESSAGES,
            "opt": None,
        },
        {
            "s": "",
            "i": -(2**40),
            "f": -1.5,
            "b": False,
            "none": None,
            "strs": [],
            "maybe_strs": [],  # an empty list stays distinct from None
            "msgs": [],
            "opt": 7,
        },
    ]
    stage.write_shard("00000", written)
    back = stage.read()
    assert back == written
    for got, want in zip(back, written, strict=True):
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}


def test_schema_rows_round_trip(tmp_path):
    prompts = [
        make_prompt(domain="math", source_dataset="toy", messages=MESSAGES, gold="4", meta={"level": 1}),
        make_prompt(domain="code", source_dataset="toy", messages=MESSAGES, tests=["assert f() == 1"]),
        make_prompt(domain="instruction", source_dataset="toy", messages=MESSAGES[1:]),
    ]
    samples = [
        make_sample(
            prompt_id="p", model="m", sample_idx=i, text="t", finish_reason="stop", num_tokens=1, sampling_key="s"
        )
        for i in range(2)
    ]
    scores = [
        make_score(prompt_id="p", model="m", sample_idx=0, reward=float("inf"), correct=None, verdict="x"),
        make_score(prompt_id="p", model="m", sample_idx=1, reward=0.5, correct=True, verdict="passed"),
    ]
    run = RunDir(tmp_path / "run")
    for name, data in [("prompts", prompts), ("sample/alpha", samples), ("score", scores)]:
        stage = run.stage(name, "k")
        stage.write_shard("00000", data)
        stage.finish({"rows_out": len(data)})
        assert run.read_stage(name) == data


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    stage = RunDir(tmp_path / "run").stage("score", "k")
    stage.write_shard("00000", rows(0))
    stage.write_shard("00001", [])  # an empty shard is a real, recorded shard
    stage.finish({"rows_out": 3})
    assert sorted(p.name for p in stage.dir.iterdir()) == ["00000.parquet", "00001.parquet", "manifest.json"]
    assert stage.read() == rows(0)
    # A failed write (rows that fit no parquet table) leaves neither a temp file nor a shard.
    other = RunDir(tmp_path / "run").stage("other", "k")
    with pytest.raises(StoreError) as info:
        other.write_shard("00000", [{"x": 1}, {"x": "one"}])
    assert str(info.value).startswith("stage 'other', shard '00000': the rows do not fit one parquet table: ")
    assert sorted(p.name for p in other.dir.iterdir()) == ["manifest.json"]
    assert other.shards() == []


def test_rows_with_different_keys_are_refused(tmp_path):
    stage = RunDir(tmp_path / "run").stage("score", "k")
    with pytest.raises(StoreError) as info:
        stage.write_shard("00000", [{"a": 1, "b": 2}, {"a": 1}])
    assert str(info.value) == "stage 'score', shard '00000': row 1 has keys ['a'] but row 0 has ['a', 'b']"


def test_resume_with_the_same_key_and_restart_with_another(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    stage = run.stage("sample", "key-1")
    for shard in range(2):  # 2 of 4 shards, then the run is killed
        stage.write_shard(f"{shard:05d}", rows(shard))
    artifact = stage.artifact("model")
    (artifact / "weights.bin").write_bytes(b"w")

    again = run.stage("sample", "key-1")
    assert [again.has_shard(f"{s:05d}") for s in range(4)] == [True, True, False, False]
    assert not again.done()
    for shard in range(2, 4):
        again.write_shard(f"{shard:05d}", rows(shard))
    assert again.read() == rows(0) + rows(1) + rows(2) + rows(3)
    assert (again.artifact("model") / "weights.bin").read_bytes() == b"w"

    with caplog.at_level(logging.WARNING, logger="fusechat3.store"):
        changed = run.stage("sample", "key-2")
    stale = tmp_path / "run" / "sample.stale-1"
    assert [r.getMessage() for r in caplog.records] == [
        f"stage 'sample': settings changed (key key-1 -> key-2); old outputs moved to {stale}"
    ]
    assert changed.shards() == [] and not changed.has_shard("00000") and changed.read() == []
    assert sorted(p.name for p in stale.iterdir()) == [f"{s:05d}.parquet" for s in range(4)] + [
        "manifest.json",
        "model",
    ]
    assert json.loads((stale / "manifest.json").read_text())["key"] == "key-1"
    assert not (changed.dir / "model").exists()

    run.stage("sample", "key-3")  # a second change never overwrites the first stale copy
    assert (tmp_path / "run" / "sample.stale-2" / "manifest.json").is_file() and stale.is_dir()


def test_an_unrecorded_shard_file_is_ignored_and_overwritten(tmp_path, monkeypatch):
    stage = RunDir(tmp_path / "run").stage("score", "k")
    stage.write_shard("00000", rows(0))

    # The run dies between writing the shard file and recording it in the manifest.
    def die(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        stage.write_shard("00001", rows(1))
    monkeypatch.undo()
    (stage.dir / "00002.parquet").write_bytes(b"half a file")  # a torn file from some other crash

    resumed = RunDir(tmp_path / "run").stage("score", "k")
    assert (resumed.dir / "00001.parquet").is_file()
    assert resumed.shards() == ["00000"] and not resumed.has_shard("00001") and not resumed.has_shard("00002")
    assert resumed.read() == rows(0)
    resumed.write_shard("00001", rows(1, n=1))
    resumed.write_shard("00002", rows(2))
    assert resumed.read() == rows(0) + rows(1, n=1) + rows(2)


def test_a_recorded_shard_whose_file_is_gone_is_redone(tmp_path):
    stage = RunDir(tmp_path / "run").stage("score", "k")
    stage.write_shard("00000", rows(0))
    (stage.dir / "00000.parquet").unlink()
    assert not stage.has_shard("00000")
    with pytest.raises(StoreError, match=r"^stage 'score': shard file .*00000.parquet is missing: delete the folder"):
        stage.read()
    stage.write_shard("00000", rows(0))
    assert stage.read() == rows(0)


def test_finish_done_and_summary(tmp_path):
    run = RunDir(tmp_path / "run")
    stage = run.stage("build", "k")
    stage.write_shard("b", rows(1))
    stage.write_shard("a", rows(0))
    assert not stage.done() and stage.summary() == {}
    summary = {"rows_in": 6, "rows_out": 6, "skipped": {"tie": 0}, "seconds": 0.1}
    stage.finish(summary)
    assert stage.done() and stage.summary() == summary
    reopened = run.stage("build", "k")
    assert reopened.done() and reopened.summary() == summary
    assert reopened.shards() == ["a", "b"] and reopened.read() == rows(0) + rows(1)  # shard-name order
    assert run.read_stage("build") == rows(0) + rows(1)
    with pytest.raises(StoreError) as info:
        reopened.write_shard("c", rows(2))
    assert str(info.value) == f"stage 'build' in {run.root} is finished: move its folder away to redo it"
    with pytest.raises(StoreError, match="^stage 'other': the summary must be JSON-able: "):
        run.stage("other", "k").finish({"bad": object()})
    assert not run.stage("build", "k2").done()  # new settings: not done any more


def test_read_stage_errors_name_the_command(tmp_path):
    run = RunDir(tmp_path / "runs" / "x")
    with pytest.raises(StoreError) as info:
        run.read_stage("score")
    assert str(info.value) == f"stage 'score' has not finished in {run.root}: run `fusechat3 score <recipe>` first"
    run.stage("score", "k").write_shard("00000", rows(0))
    with pytest.raises(StoreError) as info:
        run.read_stage("score")
    assert str(info.value) == f"stage 'score' has not finished in {run.root}: run `fusechat3 score <recipe>` first"
    with pytest.raises(StoreError) as info:
        run.read_stage("sample/alpha")
    assert str(info.value) == (
        f"stage 'sample/alpha' has not finished in {run.root}: run `fusechat3 sample <recipe>` first"
    )
    with pytest.raises(StoreError, match="run `fusechat3 sample r.yaml --source alpha` first$"):
        run.read_stage("sample/alpha", how="fusechat3 sample r.yaml --source alpha")


def test_corrupt_manifest_and_bad_names(tmp_path):
    run = RunDir(tmp_path / "run")
    stage = run.stage("score", "k")
    (stage.dir / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest.json is not valid JSON \(.*\): delete the folder .*score to redo"):
        run.stage("score", "k")
    for bad in ["", "../x", "a/../b", ".hidden", "score.stale-1", "a b"]:
        with pytest.raises(StoreError, match="must be letters, digits"):
            run.stage(bad, "k")
    good = run.stage("good", "k")
    for bad in ["", "a/b", ".tmp", "x y"]:
        with pytest.raises(StoreError, match="^shard name"):
            good.write_shard(bad, rows(0))
    with pytest.raises(StoreError, match="would clash"):
        good.artifact("00000.parquet")
    assert good.artifact("model").is_dir()


def _fill(root: str, worker: int) -> None:
    stage = RunDir(root).stage("sample", "k")
    for i in range(6):
        stage.write_shard(f"w{worker}-{i:02d}", rows(worker * 100 + i, n=1))


def test_parallel_writers_lose_no_shard(tmp_path):
    ctx = multiprocessing.get_context("fork")
    RunDir(tmp_path / "run").stage("sample", "k")
    procs = [ctx.Process(target=_fill, args=(str(tmp_path / "run"), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    stage = RunDir(tmp_path / "run").stage("sample", "k")
    assert stage.shards() == sorted(f"w{w}-{i:02d}" for w in range(3) for i in range(6))
    assert len(stage.read()) == 18
