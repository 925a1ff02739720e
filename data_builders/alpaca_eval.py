"""AlpacaEval (`tatsu-lab/alpaca_eval`): 805 instructions, each with a baseline model's answer, for a win rate.

Columns: `instruction`, `output` (the baseline's answer), `generator` (the baseline's name), `dataset`. The
config picks the baseline: `alpaca_eval_gpt4_baseline` (GPT-4) or `alpaca_eval` (text-davinci-003); AlpacaEval 2's
own baseline (GPT-4 Turbo) is published as a file of the same layout (`model_outputs.json` of `gpt4_1106_preview`
in AlpacaEval's repository): give that file as `path`. A local JSON/JSONL file or folder in this layout works the
same way. `meta["baseline"]` and `meta["baseline_model"]` carry the answer and its generator to the win-rate judge
(`fusechat3.evaluation.winrate`); a row without a baseline answer is counted `no_baseline`.
"""

from __future__ import annotations

from data_builders import Built
from data_builders._load import PromptSet, is_local, iter_rows, load, text

HUB_ID = "tatsu-lab/alpaca_eval"


def build(
    path: str = HUB_ID,
    name: str | None = "alpaca_eval_gpt4_baseline",
    split: str = "eval",
    limit: int | None = None,
    revision: str | None = None,
) -> Built:
    config = None if is_local(path) else name
    ds = load("alpaca_eval", path, ["instruction", "output", "generator"], split=split, name=config, revision=revision)
    out = PromptSet("alpaca_eval", path, HUB_ID, "instruction", limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        instruction, baseline = text(row["instruction"]), text(row["output"])
        if not baseline:
            out.skip("no_baseline", instruction)
            continue
        meta = {"benchmark": "alpaca_eval", "baseline": baseline, "baseline_model": text(row["generator"])}
        out.add(i, instruction, meta=meta)
    return out.built
