"""What SFT and DPO training share: TRL config validation, CPU defaults, data loading, the entry point.

The training functions take TRL config fields verbatim (`SFTConfig` / `DPOConfig`); this
module checks them before anything heavy is loaded, fills in what a machine without CUDA
needs, reads the training parquet files (or a `datasets` dataset) keeping only TRL's
columns, turns malformed rows into counted skips, and parses the YAML config of the
`python -m fusechat3.training.{sft,dpo}` entry points.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusechat3.recipe import RecipeError, apply_overrides, parse_yaml, resolve_model
from fusechat3.schema import RowError

logger = logging.getLogger(__name__)

# A chat message as the training sets store it; explicit so that Arrow never has to guess
# the type of a column whose first rows are skipped (empty lists).
MESSAGE_FEATURE = {"role": "string", "content": "string"}


# --------------------------------------------------------------------------- TRL config


def _closest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else "see the TRL docs for the valid fields"


def check_trl_args(args: dict, config_cls: type, where: str) -> None:
    """Raise a RecipeError naming the first key of `args` that is not a field of `config_cls`."""
    if not isinstance(args, dict):
        raise RecipeError(f"{where}: must be a mapping of {config_cls.__name__} fields, got {type(args).__name__}")
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    for key in args:
        if key == "output_dir":
            raise RecipeError(f"{where}.output_dir: set the output directory once, outside the {where} section")
        if key not in names:
            raise RecipeError(f"{where}.{key}: not a {config_cls.__name__} field; {_closest(str(key), names)}")


def device_defaults(args: dict, has_cuda: bool) -> dict:
    """`args` with what a machine without CUDA needs: CPU, fp32, a non-fused optimizer, no trackers.

    TRL defaults to bf16 and transformers to the fused AdamW; neither is what a CPU run
    wants (bf16 autocast is slow and less reproducible there). What the user set
    explicitly and cannot work is overridden with a warning; their other choices stay.
    """
    if has_cuda:
        return dict(args)
    out = dict(args)
    out["use_cpu"] = True
    for key in ("bf16", "fp16", "tf32"):
        if out.get(key):
            logger.warning("no CUDA device: %s=true is turned off, training runs on the CPU in float32", key)
            out[key] = False
    out["bf16"] = out["fp16"] = False  # explicit: TRL turns bf16 on when it is left unset
    optim = str(out.get("optim", ""))
    if "fused" in optim:
        logger.warning("no CUDA device: optim=%s is replaced by adamw_torch", optim)
    if not optim or "fused" in optim:
        out["optim"] = "adamw_torch"
    out.setdefault("report_to", "none")
    out.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; it only warns on CPU
    return out


def build_trl_config(config_cls: type, args: dict, output_dir: str, where: str) -> Any:
    """The TRL config from `args` (already key-checked) and the machine's defaults, as one clear error if bad."""
    import torch

    full = device_defaults(args, torch.cuda.is_available())
    try:
        return config_cls(output_dir=str(output_dir), **full)
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split())
        raise RecipeError(f"{where}: {config_cls.__name__} rejects these settings: {message}") from None


# --------------------------------------------------------------------------- data


def expand_files(patterns: Sequence[str], where: str) -> list[str]:
    """Parquet files from paths and globs, in a stable order; a RecipeError for one that matches nothing."""
    if isinstance(patterns, str | Path):
        patterns = [str(patterns)]
    if not patterns:
        raise RecipeError(f"{where}: no files given; list the parquet files to train on")
    files: list[str] = []
    for pattern in patterns:
        matches = [m for m in sorted(glob.glob(str(pattern))) if Path(m).is_file()]
        if not matches:
            raise RecipeError(f"{where}: {pattern!r} matches no file; check the path (relative to {Path.cwd()})")
        files.extend(m for m in matches if m not in files)
    return files


def check_columns(files: Sequence[str], columns: Sequence[str], kind: str) -> None:
    """Raise a RowError naming the first file that lacks one of `columns` (reads parquet footers only)."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise RowError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise RowError(f"{path}: missing column(s) {missing}; a {kind} row needs {list(columns)}")


def checked_files(patterns: Sequence[str], columns: Sequence[str], where: str, kind: str) -> list[str]:
    """The parquet files behind `patterns`, each checked to have `columns` (cheap: footers only)."""
    paths = expand_files(patterns, where)
    check_columns(paths, columns, kind)
    return paths


def load_parquet(paths: Sequence[str], columns: Sequence[str]) -> Any:
    """A `datasets.Dataset` of only `columns` from checked parquet files (analysis columns are not read)."""
    import datasets

    # Reading only TRL's columns also avoids schema clashes between shards in the analysis
    # columns (e.g. score_rejected all-null in one file, float in another).
    return datasets.load_dataset("parquet", data_files=list(paths), split="train", columns=list(columns))


def load_named_dataset(name: str, split: str, columns: Sequence[str], kind: str) -> Any:
    """A Hub dataset id or a local dataset folder through `datasets.load_dataset`, keeping only `columns`."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise RecipeError(
            f"dataset {name!r} (split {split!r}): cannot be loaded ({' '.join(str(e).split())})"
        ) from None
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise RowError(
            f"dataset {name!r} (split {split!r}): missing column(s) {missing}; a {kind} row needs {list(columns)}"
        )
    return ds.select_columns(list(columns))


def message_problem(messages: Any, name: str) -> str:
    """Why a list of chat messages cannot be trained on ('' if it can)."""
    if not isinstance(messages, list) or not messages:
        return f"empty {name}"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"malformed message in {name} (needs string role and content)"
    return ""


def clean_messages(messages: list[dict]) -> list[dict]:
    """Only role and content: TRL's conversational format, and one Arrow type for every row."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def convert_rows(dataset: Any, convert: Callable[[dict], dict], columns: Sequence[str], stage: str) -> Any:
    """Map each row with `convert` (which returns TRL's columns and a `skip` reason, '' to keep) and drop skips.

    Returns the kept rows, with only `columns`; prints how many rows were skipped and why.
    """
    import datasets

    features = datasets.Features(
        {c: [{k: datasets.Value(v) for k, v in MESSAGE_FEATURE.items()}] for c in columns}
        | {"skip": datasets.Value("string")}
    )
    mapped = dataset.map(convert, remove_columns=dataset.column_names, features=features, desc=f"Checking {stage} rows")
    reasons = Counter(r for r in mapped["skip"] if r)
    kept = mapped.filter(lambda r: not r, input_columns="skip") if reasons else mapped
    print_summary(stage, len(dataset), len(kept), reasons)
    if len(kept) == 0:
        raise RowError(f"{stage}: none of the {len(dataset)} rows can be trained on ({dict(reasons)})")
    return kept.remove_columns("skip")


def print_summary(stage: str, rows_in: int, rows_out: int, skipped: Counter) -> None:
    """The stage's rows in, rows out and skips by reason, once (on the main process)."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    lines = [f"{stage}: {rows_in} rows in, {rows_out} rows out, {rows_in - rows_out} skipped"]
    lines += [f"  {n:>8}  {reason}" for reason, n in skipped.most_common()]
    print("\n".join(lines), flush=True)


def report_trl_drops(stage: str, rows_in: int, trainer: Any, packing: bool = False) -> None:
    """Count the rows TRL's own preparation dropped (a prompt that fills max_length leaves nothing to learn)."""
    if packing:
        return  # packing regroups rows into blocks: the counts no longer match
    rows_out = len(trainer.train_dataset)
    if rows_out < rows_in:
        reason = "prompt fills max_length (nothing left to train on): raise max_length"
        print_summary(f"{stage} (TRL)", rows_in, rows_out, Counter({reason: rows_in - rows_out}))


def load_tokenizer(model: str, config: Any) -> Any:
    """The model's tokenizer; a RecipeError if it has no chat template and none is configured."""
    from transformers import AutoTokenizer

    kwargs = config.model_init_kwargs if isinstance(config.model_init_kwargs, dict) else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model, revision=kwargs.get("revision"), trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise RecipeError(f"model {model!r}: cannot load its tokenizer ({reason}); check the path or Hub id") from None
    if not tokenizer.chat_template and not getattr(config, "chat_template_path", None):
        raise RecipeError(
            f"model {model!r}: its tokenizer has no chat template; set chat_template_path to a tokenizer "
            "or a .jinja file that has one"
        )
    return tokenizer


def save_final(trainer: Any, output_dir: str) -> str:
    """Save the trained model and its tokenizer (with the chat template) where vLLM can load them."""
    trainer.save_model(output_dir)  # gathers ZeRO-3 / FSDP shards; writes the processing class too
    trainer.save_state()  # trainer_state.json: the loss curve, for reports
    trainer.accelerator.wait_for_everyone()
    return str(output_dir)


# --------------------------------------------------------------------------- entry point

_COMMON_KEYS = ("model", "train_files", "dataset", "split", "eval_files", "eval_split", "output_dir")


@dataclasses.dataclass
class RunConfig:
    """A training config file: where the model and data are, where the result goes, the TRL fields."""

    model: str
    output_dir: str
    args: dict
    train_files: list[str] | None = None
    dataset: str | None = None
    split: str = "train"
    eval_files: list[str] | None = None
    eval_split: str | None = None
    ref_model: str | None = None


def load_run_config(
    path: str, section: str, config_cls: type, overrides: Sequence[str] = (), extra_keys: Sequence[str] = ()
) -> RunConfig:
    """Read a training YAML (`model`, `train_files` or `dataset`, `output_dir`, `<section>:` TRL fields).

    The `<section>` keys are checked against the TRL config class `config_cls` here, so that
    the error names the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the config ({e.strerror or e})") from None
    try:
        raw = parse_yaml(text)
        if not isinstance(raw, dict):
            raise RecipeError(f"must be a mapping with model:, train_files: (or dataset:), output_dir: and {section}:")
        raw = apply_overrides(raw, overrides)
        run = _run_config(raw, section, extra_keys)
        check_trl_args(run.args, config_cls, section)
        return run
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


def _run_config(raw: dict, section: str, extra_keys: Sequence[str]) -> RunConfig:
    valid = [*_COMMON_KEYS, *extra_keys, section]
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            raise RecipeError(f"unknown key '{key}'; {hint}")
    for key in ("model", "output_dir"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise RecipeError(f"key '{key}' is required and must be a string")
    for key in ("dataset", "split", "eval_split", "ref_model"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise RecipeError(f"key '{key}' must be a string")
    if (raw.get("train_files") is None) == (raw.get("dataset") is None):
        raise RecipeError("set exactly one of 'train_files' (parquet files/globs) or 'dataset' (Hub id or folder)")
    for key in ("train_files", "eval_files"):
        value = raw.get(key)
        if isinstance(value, str):
            raw[key] = [value]
        elif value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RecipeError(f"key '{key}' must be a list of parquet paths or globs")
    args = raw.get(section) or {}
    if not isinstance(args, dict):
        raise RecipeError(f"key '{section}' must be a mapping of TRL config fields")
    return RunConfig(
        model=resolve_model(raw["model"]),
        output_dir=raw["output_dir"],
        args=args,
        train_files=raw.get("train_files"),
        dataset=raw.get("dataset"),
        split=str(raw.get("split") or "train"),
        eval_files=raw.get("eval_files"),
        eval_split=raw.get("eval_split"),
        ref_model=resolve_model(raw["ref_model"]) if raw.get("ref_model") else None,
    )


def parse_cli(argv: Sequence[str] | None, prog: str, description: str) -> argparse.Namespace:
    """The entry points' arguments: `--config FILE` and repeatable `--set key.path=value`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", required=True, help="training YAML (model, train_files or dataset, output_dir, ...)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, dotted for TRL fields (e.g. --set sft.learning_rate=1e-5); repeatable",
    )
    return parser.parse_args(argv)


def run_cli(run: Callable[[], str]) -> int:
    """Run a training entry point; a user mistake is one line on stderr and exit code 2."""
    try:
        out = run()
    except (RecipeError, RowError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved to {out}")
    return 0
