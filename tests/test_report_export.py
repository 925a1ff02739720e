"""The data report (plots + HTML) and the Hub export (layout, dataset card, push) on a small synthetic run.

The run is made with the real store and the real build stage: hand-made Prompt, Sample and Score
rows go through `fusechat3.store` stages, then `run_build` applies the FuseChat-3.0 rules.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fusechat3 import schema
from fusechat3.building.stage import run_build
from fusechat3.cli import main
from fusechat3.export import export_local, push, size_category
from fusechat3.recipe import load_recipe
from fusechat3.report import PLOTS, dpo_gaps, load, write_report
from fusechat3.run import Run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BAND = (0.1, 0.6)

RECIPE = """
name: synth
run_dir: {run_dir}
prompts: [{{builder: toyworld}}]
sources:
  - {{name: alpha, model: toyworld:alpha, domains: [instruction, math]}}
  - {{name: beta, model: toyworld:beta, sampling: {{n: 3, n_per_domain: {{zh: 1}}}}}}
{target}scoring: {{reward_model: {{model: toyworld:reward}}}}
building:
  sft_fraction: {{instruction: 0.5, math: 0.5, code: 0.5}}
  reward_gap: [{lo}, {hi}]
  reward_gap_per_domain: {{code: null}}
  zh_source: beta
target: {{model: toyworld:target}}
"""
# The target's own samples (for WRPO), added to the recipe by `_make_run(..., target=True)`.
TARGET_SOURCE = "  - {name: own, model: toyworld:target, role: target, domains: [instruction, math, code]}\n"

# domain -> (source datasets, prompts per dataset)
PROMPTS = {"instruction": (["ultrafeedback", "helpsteer"], 20), "math": (["openmath"], 24), "code": (["leetcode"], 16)}


def _prompts() -> list[dict]:
    out = []
    for domain, (datasets_, n) in PROMPTS.items():
        for ds in datasets_:
            for i in range(n):
                extra = (
                    {"gold": "4"} if domain == "math" else {"tests": ["assert f() == 1"]} if domain == "code" else {}
                )
                msgs = [{"role": "user", "content": f"{domain} task {ds} {i}"}]
                out.append(schema.make_prompt(domain=domain, source_dataset=ds, messages=msgs, **extra))
    for i in range(6):
        msgs = [{"role": "user", "content": f"把这句话翻译 {i}"}]
        out.append(schema.make_prompt(domain="zh", source_dataset="alpaca_zh", messages=msgs))
    return out


def _responses(prompts: list[dict], models: tuple[str, ...]) -> tuple[dict[str, list[dict]], list[dict]]:
    """Samples per source and their Scores: seeded random rewards, unique texts of varying length."""
    rng = random.Random(0)
    samples: dict[str, list[dict]] = {m: [] for m in models}
    scores = []
    for p in prompts:
        for model in models:
            if p["domain"] in ("zh", "code") and model == "alpha" or p["domain"] == "zh" and model == "own":
                continue  # alpha is not sampled on zh and code, the target not on zh
            for idx in range(1 if p["domain"] == "zh" else 3):
                text = " ".join([f"{model}{idx}"] + ["word"] * rng.randint(1, 30))
                finish = "length" if rng.random() < 0.03 else "stop"
                s = schema.make_sample(
                    prompt_id=p["prompt_id"],
                    model=model,
                    sample_idx=idx,
                    text=text,
                    finish_reason=finish,
                    num_tokens=len(text.split()),
                    sampling_key="k",
                )
                samples[model].append(s)
                correct = rng.random() < 0.6 if p["domain"] in ("math", "code") else None
                zh = p["domain"] == "zh"  # no rewards at all in zh: the report must note it, not crash
                scores.append(
                    schema.make_score(
                        prompt_id=p["prompt_id"],
                        model=model,
                        sample_idx=idx,
                        reward=None if zh else round(rng.uniform(0.0, 1.0), 4),
                        correct=correct,
                        verdict="passed" if correct else "wrong_answer" if correct is False else "unchecked",
                        reward_status="too_long" if zh else "ok",
                        truncated=s["truncated"],
                        empty=s["empty"],
                    )
                )
    return samples, scores


def _write_stage(run: Run, name: str, rows: list[dict]) -> None:
    stage = run.stage(name)
    stage.write_shard("shard-00000", rows)
    stage.finish({"rows": len(rows)})


def _make_run(root: Path, build: bool = True, target: bool = False) -> Path:
    """A finished (or build-less) synthetic run under `root`; returns its recipe file.

    `target`: the recipe also samples the target itself (role: target), so the build writes wrpo.parquet."""
    recipe = root / "synth.yaml"
    text = RECIPE.format(run_dir=root / "run", lo=BAND[0], hi=BAND[1], target=TARGET_SOURCE if target else "")
    recipe.write_text(text, encoding="utf-8")
    run = Run(load_recipe(recipe))
    prompts = _prompts()
    samples, scores = _responses(prompts, ("alpha", "beta", "own") if target else ("alpha", "beta"))
    _write_stage(run, "prompts", prompts)
    for name, rows in samples.items():
        _write_stage(run, f"sample/{name}", rows)
    _write_stage(run, "score", scores)
    if build:
        run_build(run)
    return recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The recipe of a finished synthetic run (read-only for the tests that share it)."""
    return _make_run(tmp_path_factory.mktemp("finished"))


def _run(recipe: Path, *overrides: str) -> Run:
    return Run(load_recipe(recipe, list(overrides)))


def _build_rows(run: Run, name: str) -> list[dict]:
    return pq.read_table(run.dir.root / "build" / f"{name}.parquet").to_pylist()


def _expected_composition(run: Run) -> dict[tuple[str, str], list[int]]:
    """(domain, source dataset) -> [prompts, SFT rows, DPO rows], counted here from the rows themselves."""
    prompts = {p["prompt_id"]: (p["domain"], p["source_dataset"]) for p in run.read("prompts")}
    out: dict[tuple[str, str], list[int]] = {k: [n, 0, 0] for k, n in Counter(prompts.values()).items()}
    for col, name in ((1, "sft"), (2, "dpo")):
        for r in _build_rows(run, name):
            out[prompts[r["prompt_id"]]][col] += 1
    return out


def _front_matter(card: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


def _card_composition(card: str) -> dict[tuple[str, str], list[int]]:
    section = card.split("## Composition", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0]]
    assert header == ["domain", "source dataset", "prompts", "SFT", "DPO"]
    return {(r[0].strip(), r[1].strip()): [int(c) for c in r[2:]] for r in rows[1:]}


# --------------------------------------------------------------------------- report


def test_report_writes_every_plot_and_a_page_that_shows_them(finished, tmp_path):
    run = _run(finished)
    index = write_report(run, tmp_path / "report")
    page = index.read_text(encoding="utf-8")
    for name in PLOTS:
        png = tmp_path / "report" / f"{name}.png"
        blob = png.read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 5000, name
        assert f'src="{name}.png"' in page
        assert PLOTS[name][1].split(":")[0].replace("'", "&#x27;") in page  # its caption
    # Domains and sources without data are left out of a plot with a note, not a crash.
    assert "zh (no rewards)" in page and "zh (no correctness check)" in page and "zh (no DPO pairs)" in page
    assert "code: alpha (not sampled)" in page  # in the rewards and pass-rate plots
    assert "code (no band)" in page
    # The build's counted drops and the composition totals are on the page.
    stats = Run(load_recipe(finished)).dir.finished_summary("build", run.key("build"))["stats"]
    for domain, reasons in stats["drops"].items():
        for reason, n in reasons.items():
            assert f'<td>{domain}</td><td>prompt dropped</td><td>{reason}</td><td class="n">{n}</td>' in page
    total = [sum(v[i] for v in _expected_composition(run).values()) for i in range(3)]
    assert "<td>total</td><td></td>" + "".join(f'<td class="n">{n}</td>' for n in total) in page


@pytest.mark.parametrize("target", [False, True], ids=["sources", "with-target-samples"])
def test_gap_histogram_uses_the_rules_gap_and_split(finished, tmp_path, target):
    """The band kept exactly the prompts whose candidate pairs the plot shows inside it, with the same gaps
    (the target's own samples, role: target, make no DPO pair and are not in the plot)."""
    run = _run(_make_run(tmp_path, target=True) if target else finished)
    gaps = dpo_gaps(load(run))
    assert {m for pairs in gaps.values() for _, m, _ in pairs} == {"alpha", "beta"}
    assert set(gaps) == {"instruction", "math"}  # code has no band, zh is SFT-only
    dpo = _build_rows(run, "dpo")
    for domain in ("instruction", "math"):
        in_band = {(pid, m): g for pid, m, g in gaps[domain] if BAND[0] - 1e-9 <= g <= BAND[1] + 1e-9}
        out_of_band = [g for _, _, g in gaps[domain] if not BAND[0] - 1e-9 <= g <= BAND[1] + 1e-9]
        assert in_band and out_of_band, domain  # the band both keeps and drops pairs here
        rows = [r for r in dpo if r["domain"] == domain]
        assert {r["prompt_id"] for r in rows} == {pid for pid, _ in in_band}
        for r in rows:
            assert in_band[(r["prompt_id"], r["model"])] == pytest.approx(r["score_chosen"] - r["score_rejected"])


# --------------------------------------------------------------------------- export


def test_export_local_round_trips_through_datasets_and_the_card_matches(finished, tmp_path):
    import datasets

    run = _run(finished)
    out = export_local(run, tmp_path / "hub", license="apache-2.0")
    assert datasets.get_dataset_config_names(str(out)) == ["sft", "dpo"]
    for name in ("sft", "dpo"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["train-00000-of-00001.parquet"]
        loaded = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.to_list() == _build_rows(run, name)  # every column, every row, in order
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(f"{n}.png" for n in PLOTS)

    card = (out / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"]
    assert [c["config_name"] for c in meta["configs"]] == ["sft", "dpo"]
    assert meta["configs"][1]["data_files"] == [{"split": "train", "path": "dpo/train-*"}]
    n_rows = len(_build_rows(run, "sft")) + len(_build_rows(run, "dpo"))
    assert meta["size_categories"] == [size_category(n_rows)] == ["n<1K"]
    expected = _expected_composition(run)
    expected[("total", "")] = [sum(v[i] for v in expected.values()) for i in range(3)]
    assert _card_composition(card) == expected
    for name in PLOTS:
        assert f"](plots/{name}.png)" in card
    assert "[0.1, 0.6]" in card and "code: no band" in card and "`beta`" in card  # the rules used


def test_export_shards_wrpo_and_replaces_a_previous_export(tmp_path):
    import datasets

    recipe = _make_run(tmp_path, target=True)  # the build writes wrpo.parquet from the target's samples
    run = _run(recipe)
    wrpo = _build_rows(run, "wrpo")
    assert wrpo and all("source_chosen" in r for r in wrpo)

    out = export_local(run, tmp_path / "hub", max_shard_bytes=4096)
    assert datasets.get_dataset_config_names(str(out)) == ["sft", "dpo", "wrpo"]
    shards = sorted(p.name for p in (out / "wrpo").iterdir())
    n = len(shards)
    assert n > 2 and shards == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    loaded = datasets.load_dataset(str(out), "wrpo", split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.to_list() == wrpo

    # Again with the default shard size: the old shards must not linger under `train-*`.
    export_local(run, out)
    assert sorted(p.name for p in (out / "wrpo").iterdir()) == ["train-00000-of-00001.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    # The CLI's bare --local-dir writes runs/<name>/hub (the Makefile's demo uses it).
    assert main(["push", str(recipe), "--local-dir"]) == 0
    assert (run.dir.root / "hub" / "wrpo" / "train-00000-of-00001.parquet").is_file()

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a fusechat3 export"):
        export_local(run, other)


# --------------------------------------------------------------------------- push and errors


def test_push_offline_is_one_error_line(finished, capsys):
    import huggingface_hub

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1
    assert main(["push", str(finished), "--repo-id", "org/data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fusechat3: error: HF_HUB_OFFLINE"), err


def test_push_to_an_unreachable_hub_is_one_error_line(finished, monkeypatch, capsys):
    """The real Hub client against a closed local port (no network leaves the machine)."""
    import datasets
    import huggingface_hub

    endpoint = "http://127.0.0.1:9"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", str(finished), "--repo-id", "org/data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fusechat3: error: pushing config 'sft' to org/data failed") and "Connect" in err, err


def test_push_uploads_every_config_then_the_plots_then_the_card(finished, monkeypatch):
    """Only the network calls are replaced (push_to_hub, upload_folder, upload_file): the Hub cannot be reached
    from the tests. Everything before them (export, card, datasets built from the shards) is real."""
    import datasets
    import huggingface_hub

    calls: list[tuple] = []

    def push_to_hub(self, repo_id, **kw):
        calls.append(("push_to_hub", repo_id, kw, self["train"].to_list()))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw, sorted(p.name for p in Path(kw["folder_path"]).iterdir())))

    def upload_file(self, **kw):
        calls.append(("upload_file", kw["repo_id"], kw, Path(kw["path_or_fileobj"]).read_text(encoding="utf-8")))

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", push_to_hub)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)

    run = _run(finished)
    url = push(run, "org/fused-data", private=True, license="mit", revision="v1")
    assert url == "https://huggingface.co/datasets/org/fused-data"
    assert [c[0] for c in calls] == ["push_to_hub", "push_to_hub", "upload_folder", "upload_file"]
    assert all(c[1] == "org/fused-data" and c[2]["revision"] == "v1" for c in calls)
    for call, name in zip(calls[:2], ("sft", "dpo"), strict=True):
        assert call[2]["config_name"] == name and call[2]["private"] is True
        assert call[3] == _build_rows(run, name)
    assert calls[2][2]["path_in_repo"] == "plots" and calls[2][3] == sorted(f"{n}.png" for n in PLOTS)
    assert calls[3][2]["path_in_repo"] == "README.md" and calls[3][2]["repo_type"] == "dataset"
    card = calls[3][3]
    assert [c["config_name"] for c in _front_matter(card)["configs"]] == ["sft", "dpo"]
    assert _front_matter(card)["license"] == "mit"
    assert 'load_dataset("org/fused-data", "dpo", split="train")' in card


@pytest.mark.parametrize(
    "argv",
    [["report"], ["push", "--local-dir"], ["push", "--repo-id", "org/x"]],
    ids=["report", "push-local", "push-hub"],
)
def test_unfinished_build_is_one_error_line(tmp_path, capsys, argv, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # get past the Hub checks
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    recipe = _make_run(tmp_path, build=False)
    assert main([argv[0], str(recipe), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "stage 'build' has not finished" in err and "fusechat3 build" in err
    assert not (tmp_path / "run" / "hub").exists() and not (tmp_path / "run" / "report").exists()
