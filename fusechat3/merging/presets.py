"""MergeBench's data-free methods as presets: `preset: <name>` in a merge config.

MergeBench (arXiv 2505.10833) runs each method with one setting; a preset fills `merge_method` and
its `parameters` with that setting (keys the config sets itself win). Four are mergekit methods;
Consensus TA is ours (`methods.consensus_ta`). Where mergekit's method differs from MergeBench's
code, the difference is in `note`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusechat3.config import did_you_mean
from fusechat3.errors import RecipeError


@dataclass(frozen=True)
class Preset:
    method: str
    parameters: dict = field(default_factory=dict)
    formula: str = ""
    note: str = ""
    weight_per_model: bool = False  # weight 1/n for n models (the soup's average)


PRESETS: dict[str, Preset] = {
    "model_soup": Preset(
        "task_arithmetic",
        {},
        "θ = θ_base + (1/n) Σ δ_i: the average of the n fine-tuned models",
        weight_per_model=True,
    ),
    "task_arithmetic": Preset("task_arithmetic", {"weight": 0.4}, "θ = θ_base + 0.4 Σ δ_i"),
    "ties": Preset(
        "ties",
        {"density": 0.3, "weight": 1.0, "lambda": 0.4, "normalize": False},
        "keep the top 30% of each δ_i by magnitude, elect the sign of the sum, θ = θ_base + 0.4 Σ (agreeing δ_i)",
        "mergekit keeps the top 30% of each tensor; MergeBench's code of the whole flattened model",
    ),
    "dare": Preset(
        "dare_linear",
        {"density": 0.1, "weight": 0.4, "rescale": True, "normalize": False},
        "drop 90% of each δ_i at random, rescale the rest by 1/0.1, θ = θ_base + 0.4 Σ δ_i",
        "random: set `seed:` in the config for a repeatable merge",
    ),
    "consensus_ta": Preset(
        "consensus_ta",
        {"k": 2, "lam": 0.2, "scaling": 0.4},
        "keep the positions where at least 2 models' TALL masks (|δ_i| > 0.2 |Σ δ − δ_i|) agree; θ = θ_base + 0.4 Σ δ_i",
    ),
}


def apply_preset(raw: dict, where: str) -> dict:
    """The config with its `preset:` expanded into `merge_method` and `parameters` (a copy; no preset: as is)."""
    name = raw.get("preset")
    if name is None:
        return raw
    if name not in PRESETS:
        raise RecipeError(
            f"{where}: preset {name!r} is not a MergeBench preset{did_you_mean(str(name), list(PRESETS))}"
        )
    preset = PRESETS[name]
    if raw.get("merge_method") not in (None, preset.method):
        raise RecipeError(
            f"{where}: preset {name!r} is merge_method {preset.method!r}, and the config sets "
            f"{raw['merge_method']!r}: drop one of the two"
        )
    out = {k: v for k, v in raw.items() if k != "preset"}
    out["merge_method"] = preset.method
    params = dict(preset.parameters)
    if preset.weight_per_model:
        params["weight"] = 1.0 / max(1, len(raw.get("models") or []))
    out["parameters"] = {**params, **(raw.get("parameters") or {})}
    return out
