"""Logs fit for long unattended runs (`fusechat3.logs`): progress as a line every N seconds when stderr is no
terminal, third-party notices filtered, and each stage's own log file in its folder."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusechat3.logs import LineProgress, progress, stage_log

ROOT = Path(__file__).resolve().parents[1]


def test_progress_is_a_line_every_n_seconds(caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="fusechat3.progress")
    monkeypatch.setenv("FUSECHAT3_PROGRESS_SECONDS", "3600")
    bar = progress(10, "sample/chat", "prompt")  # pytest captures stderr: no terminal
    assert isinstance(bar, LineProgress)
    for _ in range(10):
        bar.update(1)
    bar.set_postfix_str("12 tok/s")
    bar.close()
    bar.close()  # once only
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("sample/chat: 10/10 prompts (100%), ")
    assert lines[0].endswith("[12 tok/s]") and " in " in lines[0]
    caplog.clear()
    monkeypatch.setenv("FUSECHAT3_PROGRESS_SECONDS", "0")
    with progress(4, "score", "response") as bar:
        bar.update(2)
        bar.update(2)
    lines = [r.getMessage() for r in caplog.records]
    heads = [line.split(",")[0] for line in lines]  # every update (interval 0), then the closing line
    assert heads == ["score: 2/4 responses (50%)", "score: 4/4 responses (100%)", "score: 4/4 responses (100%)"]
    assert "eta" in lines[0]
    assert not isinstance(progress(4, "reward", "sample", nested=True), LineProgress)  # nested: no lines at all


def test_a_stage_log_follows_its_folder(tmp_path: Path) -> None:
    """Records go to <folder>/log.txt, the stage messages too; when the store moves the folder aside (changed
    settings), the next records go to the new folder."""
    from fusechat3.run import log

    folder = tmp_path / "score"
    other = logging.getLogger("some.library")
    with stage_log(folder) as path:
        log("score: 3 shards to do")
        other.warning("a library's warning")
        folder.rename(tmp_path / "score.stale-1")
        other.warning("after the move")
    logging.getLogger("some.library").warning("after the stage")
    old = (tmp_path / "score.stale-1" / "log.txt").read_text()
    assert "INFO fusechat3.events: score: 3 shards to do" in old and "WARNING some.library: a library's warning" in old
    assert path.read_text().strip().endswith("WARNING some.library: after the move")
    assert "after the stage" not in path.read_text() + old


@pytest.mark.integration
@pytest.mark.slow  # ~25 s (a vLLM engine in a subprocess): `make test` stays under its 10 minutes on 2 cores
def test_a_run_in_a_log_file(tmp_path: Path) -> None:
    """`fusechat3 run` with stderr into a file: progress lines, no bar redraws, none of vLLM's or torch's notices,
    and the stage's own log file."""
    env = {**os.environ, "FUSECHAT3_PROGRESS_SECONDS": "0", "HF_HUB_OFFLINE": "1"}
    prompts = (
        "prompts=[{builder: toyworld, args: {split: fusion, per_domain: {math: 4, code: 0, instruction: 0, zh: 0}}}]"
    )
    with open(tmp_path / "run.log", "w") as log_file:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fusechat3.cli",
                "run",
                "recipes/toyworld/imf.yaml",
                "--to",
                "sample",
                "--set",
                f"run_dir={tmp_path / 'run'}",
                "--set",
                prompts,
                "--set",
                "sources=[{name: m, model: 'toyworld:mistral-math', sampling: {n: 2, max_tokens: 32}}]",
                "--set",
                "building.zh_source=m",
                "--set",
                "wrpo=null",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    text = (tmp_path / "run.log").read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text  # no bar redrawn
    assert "sample/m: 4/4 prompts (100%)" in text
    for noise in ("already registered", "NUMA binding", "LD_PRELOAD", "set_num_threads", "reduce_op"):
        assert noise not in text, noise
    stage_log = (tmp_path / "run" / "sample" / "log.txt").read_text()
    assert "sample/m: 4/4 prompts (100%)" in stage_log and "fusechat3.events: sample/m:" in stage_log
