"""The command line: light imports, one-line errors for user mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "toyworld" / "imf.yaml"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusechat3.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from fusechat3.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'vllm', 'trl', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "usage: fusechat3" in out.stdout
    assert "HEAVY []" in out.stdout


def test_import_fusechat3_is_light():
    code = "import sys, fusechat3, fusechat3.recipe, fusechat3.stages, fusechat3.sampling, fusechat3.training\nprint(sorted(m for m in ('torch','vllm','trl','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_misspelled_key_is_one_clear_line(tmp_path):
    raw = yaml.safe_load(RECIPE.read_text())
    raw["sources"][0]["sampling"]["temprature"] = raw["sources"][0]["sampling"].pop("temperature")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = _cli("build", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "temprature" in lines[0] and "did you mean 'temperature'" in lines[0] and "bad.yaml" in lines[0]
    assert "Traceback" not in out.stderr


def test_stage_before_its_inputs_is_one_clear_line(tmp_path):
    out = _cli("build", str(RECIPE), "--set", f"run_dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert "has not finished" in out.stderr and "fusechat3 prompts" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_override_and_shard(tmp_path):
    out = _cli("sample", str(RECIPE), "--set", "sources.7.sampling.n=3")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    out = _cli("sample", str(RECIPE), "--shard", "5/2")
    assert out.returncode == 2 and "--shard" in out.stderr
