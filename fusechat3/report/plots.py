"""The report's plots (matplotlib, imported inside the functions): one function per plot.

Each `plot_<name>(data, path)` writes one PNG and returns the notes on what it left out (a
domain or source without data is named under the plot, never a crash). `PLOTS` maps a plot's
name to its function and the one line on how to read it; `render_plots` and `plot_all` draw
them all.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusechat3.report.data import RunData, dpo_gaps, finite, load
from fusechat3.run import Run

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


def _words(messages: list[dict]) -> int:
    return sum(len((m.get("content") or "").split()) for m in messages if m.get("role") == "assistant")


# --------------------------------------------------------------------------- plots


def plot_rewards(data: RunData, path: Path) -> list[str]:
    """Box plots of the reward of every scored response, one panel per domain, one box per source."""
    title = "Reward of the sampled responses, per source"
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in data.scores:
        domain = data.domain(s["prompt_id"])
        if domain is not None and finite(s["reward"]):
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
