"""What the report reads from a finished run, and the numbers computed from it.

`load` reads the finished `prompts`, `score` and `build` stages into one `RunData`, shared by
every plot and table; `set_files` and `build_summary` are the build stage's files and summary
(the Hub export reads them too). `dpo_gaps` recomputes the reward gap of every candidate DPO
pair the way the building rules test it against the recipe's band.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusechat3.errors import StoreError
from fusechat3.run import Run, log
from fusechat3.schema import DOMAINS

# The training sets of the build stage (build/<name>.parquet), in table order; WRPO is optional.
SETS = ("sft", "dpo", "wrpo")
OPTIONAL_SETS = ("wrpo",)
UNKNOWN_SOURCE = "(prompt not in the prompts stage)"


@dataclass
class RunData:
    """What the report reads from a finished run, loaded once and shared by every plot and table."""

    run: Run
    prompts: dict[str, tuple[str, str]]  # prompt_id -> (domain, source_dataset)
    scores: list[dict]  # Score rows
    sets: dict[str, list[dict]]  # "sft", "dpo" (, "wrpo") -> rows of build/<set>.parquet
    build: dict  # the build stage's summary: per-domain counts and drop reasons

    def domain(self, prompt_id: str) -> str | None:
        entry = self.prompts.get(prompt_id)
        return entry[0] if entry else None

    @property
    def domains(self) -> list[str]:
        """The run's domains: the built-in ones in their usual order, then user-defined ones."""
        seen = {d for d, _ in self.prompts.values()}
        return [d for d in DOMAINS if d in seen] + sorted(seen - set(DOMAINS))

    @property
    def sources(self) -> list[str]:
        """The recipe's sources in recipe order, then any other model name found in the rows."""
        names = [s.name for s in self.run.recipe.sources]
        seen = {s["model"] for s in self.scores} | {r["model"] for rows in self.sets.values() for r in rows}
        return names + sorted(seen - set(names))

    def band(self, domain: str) -> tuple[float, float] | None:
        gap = self.run.recipe.building.gap_for(domain)
        return (float(gap[0]), float(gap[1])) if gap is not None else None


def set_files(run: Run) -> dict[str, Path]:
    """The build stage's training-set files by set name; WRPO only where the build wrote one."""
    out = {}
    for name in SETS:
        if name in OPTIONAL_SETS and not run.output("build", name).is_file():
            continue
        out[name] = run.existing("build", name)
    return out


def build_summary(run: Run) -> dict:
    """The finished build stage's summary; one error line if the build has not finished."""
    manifest = run.dir.manifest("build")  # a broken manifest is a StoreError line from the store
    if not manifest or not manifest.get("finished"):
        raise StoreError(f"stage 'build' has not finished in {run.dir.root}: run `{run.how('build')}` first")
    if manifest.get("key") != run.key("build"):
        # Reported, not refused: the sets on disk are what would be trained on and published.
        log(f"[yellow]note[/]: the build in {run.dir.root} was made with other settings or code than the recipe's now")
    return dict(manifest.get("summary") or {})


def load(run: Run) -> RunData:
    """Read a finished run's prompts, scores and training sets (the build must have finished)."""
    import pyarrow.parquet as pq

    summary = build_summary(run)
    files = set_files(run)
    prompts = {p["prompt_id"]: (p["domain"], p["source_dataset"]) for p in run.read("prompts")}
    sets = {name: pq.read_table(path).to_pylist() for name, path in files.items()}
    return RunData(run=run, prompts=prompts, scores=run.read("score"), sets=sets, build=summary)


def finite(x: Any) -> bool:
    """A usable reward: a number (not a bool, not None) that is finite."""
    return x is not None and not isinstance(x, bool) and math.isfinite(float(x))


def _sft_rows_with_heldout(data: RunData) -> list[dict]:
    """The build's SFT rows, the held-out ones (build/sft-heldout.parquet) included."""
    import pyarrow.parquet as pq

    rows = list(data.sets.get("sft", []))
    held = data.run.output("build", "heldout", set="sft")
    if held.is_file():
        rows += pq.read_table(held, columns=["prompt_id"]).to_pylist()
    return rows


def dpo_gaps(data: RunData) -> dict[str, list[tuple[str, str, float]]]:
    """(prompt_id, source, gap) for every DPO-split prompt and source that could make a pair, per banded domain.

    The gap is the one the building rules test against the band: highest minus lowest reward
    of the source's responses (reward rule), or highest reward of a correct response minus
    lowest reward of an incorrect one (math, code). Responses the rules can not use (no finite
    reward, truncated, empty) are left out, as the build leaves them out.

    The DPO split: by `split_of` with `building.split: before_rules`; with `after_rules` (the split made after
    the rules) every prompt without an SFT row (training or held-out). That is the build's split for every prompt
    with a candidate pair here: such a prompt has a usable (correct) response, so it could give an SFT row, and
    it went to SFT exactly when it has one.
    """
    from fusechat3.building.picking import CORRECTNESS_DOMAINS
    from fusechat3.building.spec import split_of

    cfg = data.run.recipe.building
    # DPO pairs come from the fused sources only: the target's own samples (role: target) make WRPO rows.
    own = data.run.recipe.target_samples.name if data.run.recipe.target_samples else None
    banded = {d for d in data.domains if d not in cfg.sft_only_domains and data.band(d) is not None}
    groups: dict[tuple[str, str], list[tuple[float, Any]]] = defaultdict(list)
    for s in data.scores:
        domain = data.domain(s["prompt_id"])
        if domain not in banded or s["model"] == own or not finite(s["reward"]) or s.get("truncated") or s.get("empty"):
            continue
        groups[(s["prompt_id"], s["model"])].append((float(s["reward"]), s["correct"]))
    if cfg.split == "after_rules":
        sft_ids = {r["prompt_id"] for r in _sft_rows_with_heldout(data)}

        def in_dpo(pid: str, domain: str) -> bool:
            return pid not in sft_ids
    else:

        def in_dpo(pid: str, domain: str) -> bool:
            return split_of(pid, domain, cfg) == "dpo"

    out: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for (pid, model), resps in sorted(groups.items()):
        domain = data.domain(pid)
        if not in_dpo(pid, domain):
            continue
        if domain in CORRECTNESS_DOMAINS:
            good = [r for r, c in resps if c is True]
            bad = [r for r, c in resps if c is False]
            if not good or not bad:
                continue
            gap = max(good) - min(bad)
        else:
            if len(resps) < 2:
                continue
            gap = max(r for r, _ in resps) - min(r for r, _ in resps)
        out[domain].append((pid, model, gap))
    return dict(out)
