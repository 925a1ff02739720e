"""Training data: parquet files (or a `datasets` dataset) read with only the trainer's columns, each
row checked and converted to TRL's conversational format, malformed rows turned into counted skips,
and the tokenizer check (a chat template is required).
"""

from __future__ import annotations

import glob
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusechat3.errors import RecipeError, RowError

# A chat message as the training sets store it; explicit so that Arrow never has to guess
# the type of a column whose first rows are skipped (empty lists).
MESSAGE_FEATURE = {"role": "string", "content": "string"}


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
            f"dataset {name!r} (split {split!r}): cannot be loaded ({' '.join(str(e).split())[:300]}); "
            "check the config's dataset (a Hub id or local folder), split and eval_split"
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
