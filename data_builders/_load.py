"""What every builder shares: loading a prompt source and turning its rows into Prompt rows.

`load` reads anything `datasets.load_dataset` reads: a local file (by suffix: .jsonl, .json,
.parquet, .csv, .arrow), a local folder (its files by split name, e.g. `train.jsonl`), or a Hub
id with a split, a config name and a revision. It checks the columns a builder needs first: a
missing one is ONE error line naming the builder, the path, the columns it reads and the columns
found. `PromptSet` collects the Prompt rows of one source, with the row index in `meta["row"]`,
the rows it cannot use counted by reason (a `Built`), and the `limit` on prompts read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from data_builders import Built
from fusechat3.errors import RecipeError, RowError, UserError
from fusechat3.schema import make_prompt

if TYPE_CHECKING:
    import datasets

# File suffix -> the `datasets` loader that reads it.
LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


def load(
    builder: str,
    path: str,
    columns: Sequence[str],
    *,
    split: str = "train",
    name: str | None = None,
    revision: str | None = None,
    hint: str = "; give the dataset in its original column layout",
) -> datasets.Dataset:
    """The `columns` of split `split` of the dataset at `path` (file, folder or Hub id).

    Any problem is one line that starts with `<builder> builder: <path>`: a RecipeError for a path, split
    or config name that cannot be loaded, a RowError for a file of an unknown type or without the columns
    the builder reads; `hint` ends the missing-column line (how to fix it)."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(path).expanduser()
    where = f"{builder} builder: {path}"
    try:
        if local.is_file():
            loader = LOADERS.get(local.suffix)
            if loader is None:
                raise RowError(f"{where}: unknown file type {local.suffix!r}; convert it to one of {sorted(LOADERS)}")
            ds = datasets.load_dataset(loader, data_files=str(local), split="train")
        elif local.is_dir():
            ds = datasets.load_dataset(str(local), name=name, split=split)
        elif local.suffix in LOADERS:
            raise RecipeError(f"{where}: no such file; fix the builder's path argument (relative to {Path.cwd()})")
        else:
            ds = datasets.load_dataset(path, name=name, split=split, revision=revision)
    except UserError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        # A wrong path, Hub id, split or config name (or no network): datasets says which in its first line.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(
            f"{where}: cannot load split {split!r} ({first}); check the builder's path, split and name arguments"
        ) from None
    found = list(ds.column_names)
    missing = [c for c in columns if c not in found]
    if missing:
        raise RowError(f"{where}: no column(s) {missing} (found: {found}); it reads {list(columns)}{hint}")
    return ds.select_columns(list(dict.fromkeys(columns)))


def iter_rows(ds: datasets.Dataset, batch_size: int = 1024) -> Iterator[tuple[int, dict]]:
    """(row index, row) over a dataset, read in batches (much faster than row by row)."""
    i = 0
    for batch in ds.iter(batch_size=batch_size):
        names = list(batch)
        for values in zip(*(batch[n] for n in names), strict=True):
            yield i, dict(zip(names, values, strict=True))
            i += 1


def text(value: object) -> str:
    """A cell as prompt text: None is empty, the rest is str, stripped."""
    return "" if value is None else str(value).strip()


class PromptSet:
    """The Prompt rows of one source, as a builder adds them.

    `source_dataset` is the builder's Hub id when the data is read from a local copy of it (so a
    prompt has the same prompt_id wherever the data was read from), else the path given. With
    `merge=True` a prompt that repeats one already added is the same prompt (several responses per
    prompt in the source): it is not added again and not counted; otherwise repeats are left to
    `collect`, which counts them as `duplicate_prompt`. `limit` bounds the distinct prompts read."""

    def __init__(
        self, builder: str, path: str, hub_id: str, domain: str, *, limit: int | None = None, merge: bool = False
    ) -> None:
        if limit is not None and limit < 0:
            raise RecipeError(f"{builder} builder: limit must be >= 0 or null, got {limit}")
        self.builder, self.path, self.domain, self.limit, self.merge = builder, path, domain, limit, merge
        self.source = hub_id if is_local(path) else path
        self.built = Built([])
        self._seen: set[object] = set()

    @property
    def full(self) -> bool:
        """True once `limit` distinct prompts have been read."""
        return self.limit is not None and len(self._seen) >= self.limit

    def skip(self, reason: str, content: str | list[dict] | None = None) -> None:
        """Count a source row that gives no prompt, by reason; with its prompt `content`, it counts
        towards `limit` (and, with `merge`, a repeat of a prompt already counted is not counted again)."""
        if content is not None:
            key = _key(content)
            if self.merge and key in self._seen:
                return
            self._seen.add(key)
        self.built.skip(reason)

    def add(
        self,
        row: int,
        content: str | list[dict],
        *,
        gold: str | None = None,
        tests: list[str] | None = None,
        meta: dict | None = None,
    ) -> dict | None:
        """Add the prompt of source row `row` (a user message, or a conversation ending with one);
        None if it is empty (counted `empty_prompt`) or repeats one added before with `merge`."""
        messages = _messages(content)
        key = _key(content)
        if self.merge and key in self._seen:
            return None
        self._seen.add(key)
        if not messages or not text(messages[-1]["content"]):
            self.built.skip("empty_prompt")
            return None
        try:
            prompt = make_prompt(
                domain=self.domain,
                source_dataset=self.source,
                messages=messages,
                gold=gold,
                tests=tests,
                meta={**(meta or {}), "row": row},
            )
        except (RowError, TypeError, KeyError) as e:
            raise RowError(f"{self.builder} builder: {self.path}: row {row}: {e}") from None
        self.built.rows.append(prompt)
        return prompt


def _messages(content: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": content}] if isinstance(content, str) else content


def _key(content: str | list[dict]) -> tuple:
    return tuple((m["role"], m["content"]) for m in _messages(content))


def from_column(
    builder: str,
    hub_id: str,
    domain: str,
    path: str,
    column: str,
    meta_columns: dict[str, str] | None = None,
    *,
    split: str = "train",
    limit: int | None = None,
    revision: str | None = None,
) -> Built:
    """The common case: one prompt per row, the user message in `column`; `meta_columns` maps a meta key
    to the column it is copied from (e.g. {"category": "task_category"})."""
    meta_columns = meta_columns or {}
    ds = load(builder, path, [column, *meta_columns.values()], split=split, revision=revision)
    out = PromptSet(builder, path, hub_id, domain, limit=limit)
    for i, row in iter_rows(ds):
        if out.full:
            break
        out.add(i, text(row[column]), meta={key: row[col] for key, col in meta_columns.items()})
    return out.built
