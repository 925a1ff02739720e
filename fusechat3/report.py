"""The data report of a run: plots of what the build made and why, and one HTML page.

`fusechat3 report <recipe>` reads the finished `prompts`, `score` and `build` stages and
writes `runs/<name>/report/`: one PNG per plot and `index.html` (run and recipe facts, the
composition table, the plots with a line on how to read each, the build's drop counts).

The plots (one function each; `plot_all` draws them all, the Hub export embeds the same):

- `rewards`: reward-model scores per source, per domain where rewards exist;
- `sft_share`: which source won the SFT picks, per domain;
- `lengths`: chosen vs rejected response lengths of the DPO pairs, per domain;
- `gaps`: the best-minus-worst reward gap of every (DPO-split prompt, source), with the
  recipe's band shaded: how many candidate pairs the band keeps and drops;
- `pass_rates`: share of each source's responses judged correct, per checked domain.

A domain or source without data is left out of a plot and named in a note under it, never
a crash. The composition and drop tables are computed here once and rendered by the page
and by the dataset card (`fusechat3.export`).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusechat3.run import Run, log
from fusechat3.schema import DOMAINS
from fusechat3.store import MANIFEST

# The training sets of the build stage (build/<name>.parquet), in table order; WRPO is optional.
SETS = ("sft", "dpo", "wrpo")
OPTIONAL_SETS = ("wrpo",)
UNKNOWN_SOURCE = "(prompt not in the prompts stage)"

# --------------------------------------------------------------------------- data


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
    from fusechat3.building.stage import training_file

    out = {}
    for name in SETS:
        if name in OPTIONAL_SETS and not (run.dir.root / "build" / f"{name}.parquet").is_file():
            continue
        out[name] = Path(training_file(run, name))
    return out


def build_summary(run: Run) -> dict:
    """The finished build stage's summary; one error line if the build has not finished."""
    how = f"fusechat3 build {run.recipe.path or '<recipe>'}"
    path = run.dir.root / "build" / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}): run `{how}` again") from None
    if not manifest or not manifest.get("finished"):
        raise ValueError(f"stage 'build' has not finished in {run.dir.root}: run `{how}` first")
    if manifest.get("key") != run.key("build"):
        # Reported, not refused: the sets on disk are what would be trained on and published.
        log(f"[yellow]note[/]: {run.dir.root}/build was made with other settings or code than the recipe's now")
    return dict(manifest.get("summary") or {})


def load(run: Run) -> RunData:
    """Read a finished run's prompts, scores and training sets (the build must have finished)."""
    import pyarrow.parquet as pq

    summary = build_summary(run)
    files = set_files(run)
    prompts = {p["prompt_id"]: (p["domain"], p["source_dataset"]) for p in run.read("prompts")}
    sets = {name: pq.read_table(path).to_pylist() for name, path in files.items()}
    return RunData(run=run, prompts=prompts, scores=run.read("score"), sets=sets, build=summary)


# --------------------------------------------------------------------------- tables


def composition(data: RunData) -> tuple[list[str], list[list]]:
    """Rows per (domain, source dataset): prompts and rows of each training set, with a total row.

    Training rows are joined to their prompt by `prompt_id`; a row whose prompt is not in the
    prompts stage is counted under its own name, not dropped.
    """
    names = list(data.sets)
    prompts: Counter = Counter(data.prompts.values())
    rows: dict[str, Counter] = {name: Counter() for name in names}
    for name, set_rows in data.sets.items():
        for r in set_rows:
            key = data.prompts.get(r["prompt_id"], (r.get("domain") or "?", UNKNOWN_SOURCE))
            rows[name][key] += 1
    keys = set(prompts) | {k for c in rows.values() for k in c}
    order = {d: i for i, d in enumerate(data.domains)}
    body = [
        [domain, source, prompts[(domain, source)], *(rows[n][(domain, source)] for n in names)]
        for domain, source in sorted(keys, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    ]
    total = ["total", "", sum(prompts.values()), *(sum(rows[n].values()) for n in names)]
    header = ["domain", "source dataset", "prompts", *(n.upper() for n in names)]
    return header, [*body, total]


_DROP_KINDS = {
    "drops": "prompt dropped",
    "invalid": "response unusable",
    "ignored": "response ignored",
    "wrpo_drops": "WRPO prompt dropped",
    "wrpo_invalid": "target response unusable",
}


def drop_table(summary: dict) -> tuple[list[str], list[list]]:
    """The build's counted losses: prompts that gave no row and responses that could not be used, by reason."""
    stats = summary.get("stats") or {}
    body = []
    for key, kind in _DROP_KINDS.items():
        for domain, reasons in sorted((stats.get(key) or {}).items()):
            body += [[domain, kind, reason, n] for reason, n in sorted(reasons.items()) if n]
    for reason, n in sorted((stats.get("rows") or {}).items()):
        if n:
            body.append(["-", "row skipped", reason, n])
    return ["domain", "what", "reason", "count"], body


# --------------------------------------------------------------------------- figures


def _figure(n_panels: int, title: str, panel: tuple[float, float] = (4.4, 3.3), ncols_max: int = 3):
    """A figure with `n_panels` axes on a grid (Agg, no pyplot: no global state, no display)."""
    from matplotlib.figure import Figure

    ncols = min(max(n_panels, 1), ncols_max)
    nrows = math.ceil(max(n_panels, 1) / ncols)
    width = max(panel[0] * ncols + 0.6, 0.11 * len(title) + 1.0)  # room for the title
    fig = Figure(figsize=(width, panel[1] * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    return fig, list(axes[:n_panels])


def _save(fig, path: Path, notes: list[str]) -> None:
    """Write the PNG, with the skipped domains/sources named under the plot."""
    if notes:
        text = "Not shown: " + "; ".join(notes)
        lines = math.ceil(len(text) / max(int(fig.get_figwidth() * 15), 40))
        height = min(0.45, (0.22 * lines + 0.1) / fig.get_figheight())
        fig.text(0.01, 0.01, text, fontsize=8, color="dimgray", ha="left", va="bottom", wrap=True)
        fig.get_layout_engine().set(rect=(0, height, 1, 1 - height))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _empty(path: Path, title: str, notes: list[str]) -> list[str]:
    """A plot with nothing to show is still a valid, labelled image that says why."""
    fig, (ax,) = _figure(1, title, panel=(6.0, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.5, "no data to plot", ha="center", va="center", fontsize=12, color="dimgray")
    _save(fig, path, notes)
    return notes


def _colors(sources: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(sources)}


def _finite(x: Any) -> bool:
    return x is not None and not isinstance(x, bool) and math.isfinite(float(x))


def _words(messages: list[dict]) -> int:
    return sum(len((m.get("content") or "").split()) for m in messages if m.get("role") == "assistant")


# --------------------------------------------------------------------------- plots


def plot_rewards(data: RunData, path: Path) -> list[str]:
    """Box plots of the reward of every scored response, one panel per domain, one box per source."""
    title = "Reward of the sampled responses, per source"
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in data.scores:
        domain = data.domain(s["prompt_id"])
        if domain is not None and _finite(s["reward"]):
            by[domain][s["model"]].append(float(s["reward"]))
    scored = {(data.domain(s["prompt_id"]), s["model"]) for s in data.scores}
    notes = [f"{d} (no rewards)" for d in data.domains if d not in by]
    domains = [d for d in data.domains if d in by]
    if not domains:
        return _empty(path, title, notes)
    colors = _colors(data.sources)
    fig, axes = _figure(len(domains), title)
    for ax, domain in zip(axes, domains, strict=True):
        srcs = [s for s in data.sources if by[domain].get(s)]
        for why, names in (
            ("not sampled", [s for s in data.sources if (domain, s) not in scored]),
            ("no rewards", [s for s in data.sources if (domain, s) in scored and s not in srcs]),
        ):
            if names:
                notes.append(f"{domain}: {', '.join(names)} ({why})")
        box = ax.boxplot(
            [by[domain][s] for s in srcs],
            tick_labels=[f"{s}\nn={len(by[domain][s])}" for s in srcs],
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "black"},
        )
        for patch, s in zip(box["boxes"], srcs, strict=True):
            patch.set_facecolor(colors[s])
            patch.set_alpha(0.75)
        ax.set_title(domain)
        ax.set_ylabel("reward")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path, notes)
    return notes


def plot_sft_share(data: RunData, path: Path) -> list[str]:
    """Stacked bars: each domain's SFT rows split by the source whose response was picked."""
    title = "Who won the SFT picks: share of SFT rows per source"
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in data.sets.get("sft", []):
        counts[r["domain"]][r["model"]] += 1
    domains = [d for d in data.domains if counts.get(d)] + sorted(set(counts) - set(data.domains))
    notes = [f"{d} (no SFT rows)" for d in data.domains if not counts.get(d)]
    if not domains:
        return _empty(path, title, notes)
    colors = _colors(data.sources)
    fig, (ax,) = _figure(1, title, panel=(max(4.5, 1.3 * len(domains) + 2.5), 3.8))
    bottom = [0.0] * len(domains)
    for s in data.sources:
        shares = [counts[d][s] / sum(counts[d].values()) for d in domains]
        if not any(shares):
            continue
        bars = ax.bar(range(len(domains)), shares, bottom=bottom, color=colors[s], label=s, width=0.6)
        for bar, share, b in zip(bars, shares, bottom, strict=True):
            if share >= 0.06:
                ax.text(bar.get_x() + bar.get_width() / 2, b + share / 2, f"{share:.0%}", ha="center", va="center")
        bottom = [b + x for b, x in zip(bottom, shares, strict=True)]
    ax.set_xticks(range(len(domains)), [f"{d}\n{sum(counts[d].values())} rows" for d in domains])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the domain's SFT rows")
    ax.legend(title="source", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _save(fig, path, notes)
    return notes


def plot_lengths(data: RunData, path: Path) -> list[str]:
    """Histograms of chosen vs rejected response lengths (words) of the DPO pairs, per domain."""
    import numpy as np

    title = "DPO pairs: chosen vs rejected response length"
    lengths: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for r in data.sets.get("dpo", []):
        lengths[r["domain"]][0].append(_words(r["chosen"]))
        lengths[r["domain"]][1].append(_words(r["rejected"]))
    domains = [d for d in data.domains if d in lengths] + sorted(set(lengths) - set(data.domains))
    notes = [f"{d} (no DPO pairs)" for d in data.domains if d not in lengths]
    if not domains:
        return _empty(path, title, notes)
    fig, axes = _figure(len(domains), title)
    for ax, domain in zip(axes, domains, strict=True):
        chosen, rejected = lengths[domain]
        bins = np.histogram_bin_edges(chosen + rejected, bins=min(30, max(5, len(set(chosen + rejected)))))
        for values, label, color in ((chosen, "chosen", "tab:green"), (rejected, "rejected", "tab:red")):
            label = f"{label} (median {float(np.median(values)):g})"
            ax.hist(values, bins=bins, histtype="step", linewidth=1.8, color=color, label=label)
            ax.axvline(float(np.median(values)), color=color, linestyle="--", linewidth=1)
        ax.set_title(f"{domain} ({len(chosen)} pairs)")
        ax.set_xlabel("response length (words); dashed: median")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8, loc="upper right")
    _save(fig, path, notes)
    return notes


def dpo_gaps(data: RunData) -> dict[str, list[tuple[str, str, float]]]:
    """(prompt_id, source, gap) for every DPO-split prompt and source that could make a pair, per banded domain.

    The gap is the one the building rules test against the band: highest minus lowest reward
    of the source's responses (reward rule), or highest reward of a correct response minus
    lowest reward of an incorrect one (math, code). Responses the rules can not use (no finite
    reward, truncated, empty) are left out, as the build leaves them out.
    """
    from fusechat3.building.rules import CORRECTNESS_DOMAINS, split_of
    from fusechat3.building.stage import build_config

    cfg = build_config(data.run)
    # DPO pairs come from the fused sources only: the target's own samples (role: target) make WRPO rows.
    own = cfg.target_source
    banded = {d for d in data.domains if d not in cfg.sft_only_domains and data.band(d) is not None}
    groups: dict[tuple[str, str], list[tuple[float, Any]]] = defaultdict(list)
    for s in data.scores:
        domain = data.domain(s["prompt_id"])
        if (
            domain not in banded
            or s["model"] == own
            or not _finite(s["reward"])
            or s.get("truncated")
            or s.get("empty")
        ):
            continue
        groups[(s["prompt_id"], s["model"])].append((float(s["reward"]), s["correct"]))
    out: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for (pid, model), resps in sorted(groups.items()):
        domain = data.domain(pid)
        if split_of(pid, domain, cfg) != "dpo":
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


def plot_gaps(data: RunData, path: Path) -> list[str]:
    """Histogram of the best-minus-worst reward gaps of DPO-split prompts, with the recipe's band shaded."""
    title = "Reward gap of candidate DPO pairs vs the recipe's band"
    gaps = dpo_gaps(data)
    notes = []
    for d in data.domains:
        if d in data.run.recipe.building.sft_only_domains:
            notes.append(f"{d} (SFT only)")
        elif data.band(d) is None:
            notes.append(f"{d} (no band)")
        elif d not in gaps:
            notes.append(f"{d} (no DPO-split prompt with a rewarded pair)")
    domains = [d for d in data.domains if d in gaps]
    if not domains:
        return _empty(path, title, notes)
    fig, axes = _figure(len(domains), title)
    for ax, domain in zip(axes, domains, strict=True):
        values = [g for _, _, g in gaps[domain]]
        lo, hi = data.band(domain)
        tol = 1e-9  # the rules' own tolerance at the band edges
        inside = sum(lo - tol <= g <= hi + tol for g in values)
        below = sum(g < lo - tol for g in values)
        above = len(values) - inside - below
        view_lo, view_hi = min(min(values), lo), max(max(values), lo)
        pad = 0.05 * ((view_hi - view_lo) or 1.0)
        ax.hist(values, bins=40, range=(view_lo - pad, view_hi + pad), color="tab:blue", alpha=0.8)
        ax.axvspan(lo, min(hi, view_hi + pad), color="tab:green", alpha=0.2)
        ax.set_xlim(view_lo - pad, view_hi + pad)
        n = len(values)
        ax.legend(
            handles=[
                _patch("tab:green", 0.35, f"band [{lo:g}, {hi:g}]: {inside} ({inside / n:.0%}) in band"),
                _patch("white", 0.0, f"below: {below} ({below / n:.0%})"),
                _patch("white", 0.0, f"above: {above} ({above / n:.0%})"),
            ],
            fontsize=8,
            loc="upper right",
        )
        ax.set_title(f"{domain} ({n} prompt-source pairs)")
        ax.set_xlabel("best minus worst reward")
        ax.set_ylabel("(prompt, source) pairs")
    _save(fig, path, notes)
    return notes


def _patch(color: str, alpha: float, label: str):
    from matplotlib.patches import Patch

    return Patch(facecolor=color, alpha=alpha, edgecolor="none", label=label)


def plot_pass_rates(data: RunData, path: Path) -> list[str]:
    """Grouped bars: each source's share of responses judged correct, per domain with a correctness check."""
    title = "Pass rate per source (responses judged correct)"
    totals: dict[str, Counter] = defaultdict(Counter)
    passed: dict[str, Counter] = defaultdict(Counter)
    checked: set[str] = set()
    for s in data.scores:
        domain = data.domain(s["prompt_id"])
        if domain is None:
            continue
        totals[domain][s["model"]] += 1
        passed[domain][s["model"]] += s["correct"] is True
        if s["correct"] is not None:
            checked.add(domain)
    # Math and code first: the domains the paper checks; then any other domain with a check.
    domains = [d for d in ("math", "code") if d in checked] + [
        d for d in data.domains if d in checked - {"math", "code"}
    ]
    notes = [f"{d} (no correctness check)" for d in data.domains if d not in checked]
    if not domains:
        return _empty(path, title, notes)
    colors = _colors(data.sources)
    sources = [s for s in data.sources if any(totals[d][s] for d in domains)]
    fig, (ax,) = _figure(1, title, panel=(max(5.0, 0.45 * len(domains) * len(sources) + 3), 3.8))
    width = 0.8 / max(len(sources), 1)
    for i, s in enumerate(sources):
        xs, rates = [], []
        for j, d in enumerate(domains):
            if totals[d][s]:
                xs.append(j - 0.4 + width * (i + 0.5))
                rates.append(passed[d][s] / totals[d][s])
        bars = ax.bar(xs, rates, width=width * 0.95, color=colors[s], label=s)
        ax.bar_label(bars, labels=[f"{r:.0%}" for r in rates], fontsize=7, padding=1)
    for d in domains:
        missing = [s for s in sources if not totals[d][s]]
        if missing:
            notes.append(f"{d}: {', '.join(missing)} (not sampled)")
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("pass rate")
    ax.legend(title="source", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, notes)
    return notes


# name -> (plot function, one line on how to read it); the page and the dataset card show both.
PLOTS: dict[str, tuple[Callable[[RunData, Path], list[str]], str]] = {
    "rewards": (
        plot_rewards,
        "Reward-model score of every sampled response, per domain and source: the box holds the middle half, "
        "the line is the median, whiskers reach 1.5 box heights; higher boxes win more picks where reward decides.",
    ),
    "sft_share": (
        plot_sft_share,
        "Which source gave the picked response of each SFT row, per domain: the bar splits the domain's SFT rows "
        "by source, so a source strong in a domain takes most of its bar.",
    ),
    "lengths": (
        plot_lengths,
        "Length in words of the chosen (green) and rejected (red) responses of the DPO pairs, per domain: "
        "a chosen curve far to the right of the rejected one means the pairs teach a length preference.",
    ),
    "gaps": (
        plot_gaps,
        "Best-minus-worst reward gap of every (DPO-split prompt, source) that could form a pair; the shaded "
        "band is what the recipe keeps (left of it: too close to call, right: too far apart); the build then "
        "keeps one in-band pair per prompt.",
    ),
    "pass_rates": (
        plot_pass_rates,
        "Share of each source's responses judged correct, per domain with a check (math: final answer equals "
        "the gold answer; code: passes the static check and every test).",
    ),
}


def render_plots(data: RunData, out_dir: Path) -> dict[str, tuple[Path, list[str]]]:
    """Draw every plot into `out_dir`: name -> (PNG path, what was left out of it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (fn, _) in PLOTS.items():
        path = out_dir / f"{name}.png"
        out[name] = (path, fn(data, path))
    return out


def plot_all(run: Run, out_dir: Path, data: RunData | None = None) -> dict[str, Path]:
    """Draw every plot of the report into `out_dir`: plot name -> PNG path."""
    return {name: path for name, (path, _) in render_plots(data or load(run), out_dir).items()}


# --------------------------------------------------------------------------- the page


def _html_table(header: list[str], rows: list[list], css: str = "") -> str:
    def cell(c: object) -> str:
        return f'<td class="n">{c}</td>' if isinstance(c, int) else f"<td>{html.escape(str(c))}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    body = body or f'<tr><td colspan="{len(header)}">none</td></tr>'
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def run_facts(data: RunData) -> list[tuple[str, str]]:
    """The run and recipe facts the page and the card start with."""
    r = data.run.recipe
    b = r.building
    bands = {d: data.band(d) for d in data.domains if d not in b.sft_only_domains}
    return [
        ("recipe", r.path or "(in memory)"),
        ("run directory", str(data.run.dir.root)),
        ("target", r.target.model),
        ("sources", ", ".join(f"{s.name} ({s.model})" for s in r.fusion_sources)),
        ("target's own samples (WRPO)", f"{r.target_samples.name}" if r.target_samples else "none"),
        ("reward model", r.scoring.reward_model.model),
        ("SFT fraction per domain", ", ".join(f"{d}: {f:g}" for d, f in b.sft_fraction.items())),
        ("reward-gap band", ", ".join(f"{d}: {list(v) if v else 'none'}" for d, v in bands.items())),
        ("SFT-only domains", f"{', '.join(b.sft_only_domains) or 'none'} (source: {b.zh_source or 'none'})"),
        ("rows", ", ".join(f"{n.upper()} {len(rows)}" for n, rows in data.sets.items())),
    ]


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; }
table.totals tbody tr:last-child td { font-weight: 600; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; } .note { color: #777; font-size: 0.85em; }
"""


def write_report(run: Run, out_dir: str | Path | None = None) -> Path:
    """Write the plots and `index.html` into `out_dir` (default `runs/<name>/report/`); returns the page's path."""
    out_dir = Path(out_dir) if out_dir is not None else run.dir.root / "report"
    data = load(run)
    plots = render_plots(data, out_dir)
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in run_facts(data))
    figures = []
    for name, (path, notes) in plots.items():
        note = f'<div class="note">Not shown: {html.escape("; ".join(notes))}</div>' if notes else ""
        figures.append(
            f'<figure id="{name}"><img src="{html.escape(path.name)}" alt="{name}">'
            f"<figcaption>{html.escape(PLOTS[name][1])}</figcaption>{note}</figure>"
        )
    name = html.escape(run.recipe.name)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fusechat3 report: {name}</title><style>{_CSS}</style></head>
<body>
<h1>Data report: {name}</h1>
<p>What the FuseChat-3.0 build of this run made from the sampled and scored responses, and why.
Generated {time.strftime("%Y-%m-%d %H:%M")}.</p>
<table class="facts">{facts}</table>
<h2>Composition</h2>
<p>Prompts and training rows per domain and source dataset (rows joined to prompts by <code>prompt_id</code>).</p>
{_html_table(*composition(data), css="totals")}
<h2>Plots</h2>
{"".join(figures)}
<h2>What the build dropped</h2>
<p>Every prompt gives one row or one counted drop; unusable responses are counted by reason.</p>
{_html_table(*drop_table(data.build))}
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    log(f"report: {len(plots)} plots and {index}")
    return index
