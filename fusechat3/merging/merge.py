"""`fusechat3 merge <config.yaml>`: a merge in mergekit's config format, run by mergekit's engine.

The config is mergekit's (`merge_method`, `base_model`, `models`, `parameters`, `dtype`, `tokenizer_source`,
...; every mergekit method works) plus four keys of ours, as in a training config:

- `output_dir`: where the merged model goes (default: merged/<config file name>);
- `preset`: a MergeBench method with its setting (`presets.PRESETS`) instead of `merge_method`;
- `seed`: the random seed of the random methods (DARE);
- `options`: mergekit's MergeOptions fields (e.g. `out_shard_size: 1B`, `cuda: true`).

Numerics: tensors are read and merged in float32 (float64 if `dtype: float64`) whatever they are stored
in; the result is stored in `out_dtype`, else the config's `dtype`, else the base model's own dtype.
The output is a Hugging Face model folder: config.json, safetensors shards, the tokenizer, and a model
card (README.md) with the inputs, the method and its formula, the parameters and the command.

Also `python -m fusechat3.merging.merge --config FILE [--set key=value ...]`; `--list-methods` lists
every method a config may name.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fusechat3.config import did_you_mean, read_yaml
from fusechat3.errors import RecipeError, UserError
from fusechat3.merging.presets import PRESETS, apply_preset

OUR_KEYS = ("output_dir", "preset", "seed", "options")
COMPUTE_DTYPES = ("float32", "float64")
# mergekit's MergeOptions as we default them. mergekit holds an output shard in memory until it is full and
# its default shard is 5B parameters (10 GB in bfloat16: a whole 7B model); 1B parameters (2 GB in bfloat16,
# the size of a usual Hub shard) bounds what a merge holds (benchmarks/merge_memory.py).
DEFAULT_OPTIONS = {"copy_tokenizer": True, "write_model_card": True, "quiet": True, "out_shard_size": 10**9}

# One line per method: what the README and each merged model's card say it computes (δ_i = θ_i − θ_base).
FORMULAS = {
    "varm": "w_i ∝ mean(δ_i²) per tensor (normalised); θ = θ_base + Σ w_i δ_i",
    "sce_fusechat": "M = top-τ positions by var_i(δ_i); w_i ∝ mean((M·δ_i)²); keep δ_i agreeing with sign(Σ δ); "
    "θ = θ_base + Σ w_i E_i δ_i / Σ w_i E_i (the mask sets the weights only)",
    "sce": "as sce_fusechat with δ_i replaced by M·δ_i throughout (outside the top τ, θ = θ_base)",
    "consensus_ta": "m_i = [|δ_i| > λ|Σδ − δ_i|]; θ = θ_base + s·[Σ m_i ≥ k]·Σ δ_i",
    "linear": "θ = Σ w_i θ_i / Σ w_i",
    "task_arithmetic": "θ = θ_base + λ Σ w_i δ_i",
    "ties": "trim each δ_i to its top-density magnitudes, elect sign(Σ w_i δ_i), θ = θ_base + λ Σ(agreeing w_i δ_i) "
    "(/ Σ agreeing w_i when normalize)",
    "dare_linear": "drop each δ_i entry with probability 1 − density, rescale, θ = θ_base + λ Σ w_i δ_i",
    "dare_ties": "DARE's random drop and rescale, then TIES's sign election",
}


def _resolve_refs(raw: dict) -> dict:
    """`toyworld:<name>` model references as the shipped folders (base_model, models, slices)."""
    from fusechat3.recipe import resolve_model

    def fix(ref):
        return resolve_model(ref) if isinstance(ref, str) else ref

    out = dict(raw)
    if "base_model" in out:
        out["base_model"] = fix(out["base_model"])
    if isinstance(out.get("models"), list):
        out["models"] = [{**m, "model": fix(m.get("model"))} if isinstance(m, dict) else m for m in out["models"]]
    for sl in out.get("slices") or []:
        for src in (sl.get("sources") or []) if isinstance(sl, dict) else []:
            if isinstance(src, dict):
                src["model"] = fix(src.get("model"))
    return out


def parse_merge_config(raw, where: str):
    """(mergekit MergeConfiguration, our keys) from a config mapping; one-line errors."""
    from mergekit import merge_methods
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a merge config is a mapping (merge_method, base_model, models, ...)")
    raw = _resolve_refs(apply_preset(raw, where))
    ours = {k: raw.get(k) for k in OUR_KEYS}
    body = {k: v for k, v in raw.items() if k not in OUR_KEYS}
    if "merge_method" not in body:
        raise RecipeError(f"{where}: merge_method is missing: name a method or a preset ({', '.join(PRESETS)})")
    from fusechat3.merging.methods import register

    register()  # our methods into mergekit's registry, so the config may name them
    known = [m.spec.name for m in merge_methods.registered_methods()]
    if body["merge_method"] not in known:
        raise RecipeError(
            f"{where}: merge_method {body['merge_method']!r} is unknown{did_you_mean(str(body['merge_method']), known)}"
        )
    try:
        conf = MergeConfiguration.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "config"
        raise RecipeError(f"{where}: {key}: {err['msg']}") from None
    except (ValueError, RuntimeError) as e:  # mergekit's own checks of the config (inputs, base model)
        raise RecipeError(f"{where}: {str(e).splitlines()[0]}") from None
    return conf, ours


def merge(raw: dict, *, where: str = "merge config", command: str = "", output_dir: str | None = None) -> Path:
    """Run the merge that `raw` (a merge config mapping) describes; the output folder."""
    from mergekit.common import parse_kmb
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from pydantic import ValidationError

    from fusechat3.merging.inputs import check_inputs

    conf, ours = parse_merge_config(raw, where)
    out = Path(output_dir or ours["output_dir"] or Path("merged") / Path(where).stem)
    stored = check_inputs(conf)
    compute = conf.dtype if conf.dtype in COMPUTE_DTYPES else "float32"
    out_dtype = conf.out_dtype or conf.dtype or stored or "float32"
    conf = conf.model_copy(update={"dtype": compute, "out_dtype": out_dtype})
    given = dict(ours["options"] or {})
    for key in given:  # MergeOptions ignores unknown keys: a typo would be dropped silently
        if key not in MergeOptions.model_fields:
            fields = list(MergeOptions.model_fields)
            raise RecipeError(f"{where}: options.{key} is not a mergekit MergeOptions field{did_you_mean(key, fields)}")
    try:
        if isinstance(given.get("out_shard_size"), str):  # "1B", "500M": as mergekit's command line reads it
            given["out_shard_size"] = parse_kmb(given["out_shard_size"])
        options = MergeOptions.model_validate({**DEFAULT_OPTIONS, **given, "random_seed": ours["seed"]})
    except (ValidationError, ValueError) as e:
        if not isinstance(e, ValidationError):
            raise RecipeError(f"{where}: options.out_shard_size: {e} (e.g. 1B or 500M parameters)") from None
        err = e.errors()[0]
        raise RecipeError(f"{where}: options.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    run_merge(conf, str(out), options=options, config_source=conf.to_yaml())
    _add_to_card(out, conf, command, compute)
    n = len([r for r in conf.referenced_models() if r != conf.base_model])
    onto = f" onto {conf.base_model.model.path}" if conf.base_model else ""
    print(f"merged {n} models{onto} with {conf.merge_method} in {time.time() - t0:.1f}s -> {out}")
    return out


def _add_to_card(out: Path, conf, command: str, compute: str) -> None:
    """Our section of the model card: the method's formula, its parameters, the numerics and the command."""
    card = out / "README.md"
    lines = [
        "",
        "## How it was made (fusechat3)",
        "",
        f"- Method: `{conf.merge_method}`: {FORMULAS.get(conf.merge_method, 'see mergekit for its definition')}",
        f"- Base model: `{conf.base_model.model.path if conf.base_model else 'none'}`",
        f"- Merged: {', '.join(f'`{r.model.path}`' for r in conf.referenced_models() if r != conf.base_model)}",
        f"- Parameters: `{conf.parameters or {}}` (per model: see the configuration above)",
        f"- Numerics: computed in {compute}, stored as {conf.out_dtype}",
    ]
    if command:
        lines.append(f"- Command: `{command}`")
    with card.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fusechat3.merging.merge", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="merge YAML (mergekit's format + output_dir, preset, seed, options)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    p.add_argument("--list-methods", action="store_true", help="list the merge methods and presets, then exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.list_methods:
        from fusechat3.merging.methods import method_names

        print("methods: " + ", ".join(method_names()))
        print("presets (MergeBench): " + ", ".join(PRESETS))
        return 0
    if not ns.config:
        print("error: --config FILE is required", file=sys.stderr)
        return 2
    command = "fusechat3 merge " + " ".join(
        shlex.quote(a) for a in [ns.config, *(x for o in ns.overrides for x in ("--set", o))]
    )
    try:
        merge(read_yaml(ns.config, ns.overrides, what="merge config"), where=ns.config, command=command)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
