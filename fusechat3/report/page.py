"""The report's HTML page: `write_report` draws the plots and writes `index.html` beside them.

The page shows the run and recipe facts, the composition table, every plot with the line on
how to read it and what it left out, and the build's drop counts.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from fusechat3.report.data import load
from fusechat3.report.plots import PLOTS, render_plots
from fusechat3.report.tables import composition, drop_table, run_facts
from fusechat3.run import Run, log


def _html_table(header: list[str], rows: list[list], css: str = "") -> str:
    def cell(c: object) -> str:
        return f'<td class="n">{c}</td>' if isinstance(c, int) else f"<td>{html.escape(str(c))}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    body = body or f'<tr><td colspan="{len(header)}">none</td></tr>'
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


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
