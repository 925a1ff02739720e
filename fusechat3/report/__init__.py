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
a crash. The composition and drop tables are computed once and rendered by the page and by
the dataset card (`fusechat3.export`).

The modules, by concern:

- `data`: loading a finished run (`RunData`, `load`, `set_files`, `build_summary`) and the
  candidate DPO pairs' reward gaps (`dpo_gaps`);
- `tables`: the run facts, composition and drop tables;
- `plots`: one function per plot, `PLOTS`, `render_plots`, `plot_all` (matplotlib);
- `page`: the HTML page, `write_report`.

Importing this package is light: matplotlib and pyarrow are imported inside the functions.
"""

from __future__ import annotations

from fusechat3.report.data import (
    OPTIONAL_SETS,
    SETS,
    UNKNOWN_SOURCE,
    RunData,
    build_summary,
    dpo_gaps,
    load,
    set_files,
)
from fusechat3.report.page import write_report
from fusechat3.report.plots import (
    PLOTS,
    plot_all,
    plot_gaps,
    plot_lengths,
    plot_pass_rates,
    plot_rewards,
    plot_sft_share,
    render_plots,
)
from fusechat3.report.tables import composition, drop_table, run_facts

__all__ = [
    "OPTIONAL_SETS",
    "PLOTS",
    "SETS",
    "UNKNOWN_SOURCE",
    "RunData",
    "build_summary",
    "composition",
    "dpo_gaps",
    "drop_table",
    "load",
    "plot_all",
    "plot_gaps",
    "plot_lengths",
    "plot_pass_rates",
    "plot_rewards",
    "plot_sft_share",
    "render_plots",
    "run_facts",
    "set_files",
    "write_report",
]
