"""The report's tables: the run facts, the composition and the build's drop counts.

Computed once here, as (header, rows), and rendered both by the HTML page
(`fusechat3.report.page`) and by the dataset card (`fusechat3.export`).
"""

from __future__ import annotations

from collections import Counter

from fusechat3.report.data import UNKNOWN_SOURCE, RunData


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
