"""The run directory: one folder per stage with parquet shards, a manifest, and resume.

Layout: `runs/<name>/<stage>/` holds `<shard>.parquet` files, `manifest.json` and
artifact folders (non-row outputs such as a trained model). The manifest records the
stage key (a hash of the stage's inputs and settings, computed by the caller), the
shards written so far and, once the stage is finished, its summary.

- Every file is written atomically (temp file in the same folder, fsync, os.replace), and a
  shard counts only once the manifest records it: a run killed between the two writes
  loses that shard and redoes it, never reads half of it.
- Opening a stage with a different key means its settings changed: the old folder is moved
  aside to `<stage>.stale-<n>/` (never deleted) and the stage starts fresh.
- Manifest updates hold a lock on the run directory, so several processes (e.g. `sample
  --shard i/n` jobs on one shared filesystem) can fill one stage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fusechat3.errors import StoreError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_SUFFIX = ".parquet"
_LOCK = ".store.lock"
# Shard and artifact names become file names; stage names may nest one level per `/`.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_name(kind: str, name: str, nested: bool = False) -> str:
    parts = name.split("/") if nested else [name]
    if not all(_NAME_RE.match(p) and ".stale-" not in p for p in parts):
        raise StoreError(f"{kind} name {name!r} must be letters, digits, '_', '.', '-' (and not contain '.stale-')")
    return name


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is flushed.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    blob = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(blob))


def _write_parquet(path: Path, rows: list[dict], where: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(rows[0]) if rows else []
    for i, row in enumerate(rows):
        # pyarrow takes the columns from the first row and drops other keys silently.
        if set(row) != set(keys):
            raise StoreError(f"{where}: row {i} has keys {sorted(row)} but row 0 has {sorted(keys)}")
    try:
        table = pa.Table.from_pylist(rows) if rows else pa.table({})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise StoreError(f"{where}: the rows do not fit one parquet table: {e}") from None
    atomic_write(path, lambda f: pq.write_table(table, f))


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- stages


class RunDir:
    """A run's folder: `runs/<name>/`, one sub-folder per stage."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str, key: str) -> Stage:
        """Open (or create) stage `name` for settings `key`; a stale stage is moved aside first."""
        return Stage(self, _check_name("stage", name, nested=True), key)

    def read_stage(self, name: str, how: str | None = None) -> list[dict]:
        """All rows of the finished stage `name` (`how`: the command that makes it, for the error)."""
        folder = self.root / _check_name("stage", name, nested=True)
        manifest = _read_manifest(folder)
        if manifest is None or not manifest.get("finished"):
            how = how or f"fusechat3 {name.split('/')[0]} <recipe>"
            raise StoreError(f"stage {name!r} has not finished in {self.root}: run `{how}` first")
        return _read_shards(folder, manifest, name)

    def manifest(self, name: str) -> dict | None:
        """The manifest of stage `name` as it is on disk (None: the stage never started here)."""
        return _read_manifest(self.root / _check_name("stage", name, nested=True))

    def finished_summary(self, name: str, key: str) -> dict | None:
        """The summary of stage `name` if it finished under `key`, else None (reads only: no lock)."""
        manifest = _read_manifest(self.root / _check_name("stage", name, nested=True))
        if manifest is None or manifest.get("key") != key or not manifest.get("finished"):
            return None
        return dict(manifest.get("summary") or {})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock for the whole run: manifest updates are tiny, contention does not matter.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is not valid JSON ({e}): delete the folder {folder} to redo that stage") from None


def _read_shards(folder: Path, manifest: dict, name: str) -> list[dict]:
    rows: list[dict] = []
    for shard in sorted(manifest["shards"]):
        path = folder / (shard + SHARD_SUFFIX)
        if not path.is_file():
            raise StoreError(f"stage {name!r}: shard file {path} is missing: delete the folder {folder} to redo it")
        rows.extend(_read_parquet(path))
    return rows


class Stage:
    """One stage's folder: shards recorded in a manifest under the stage key."""

    def __init__(self, run: RunDir, name: str, key: str) -> None:
        self.run = run
        self.name = name
        self.key = key
        self.dir = run.root / name
        with run._locked():
            manifest = _read_manifest(self.dir)
            if manifest is not None and manifest.get("key") != key:
                self._move_aside(manifest.get("key"))
                manifest = None
            if manifest is None:
                # Shard files without a manifest are from a run killed before it recorded them.
                self.dir.mkdir(parents=True, exist_ok=True)
                _write_json(self.dir / MANIFEST, self._fresh_manifest())

    def _fresh_manifest(self) -> dict:
        return {"stage": self.name, "key": self.key, "shards": {}, "finished": False, "summary": None}

    def _move_aside(self, old_key: str | None) -> None:
        n = 1
        while (stale := self.dir.with_name(f"{self.dir.name}.stale-{n}")).exists():
            n += 1
        os.replace(self.dir, stale)
        log.warning(
            "stage %r: settings changed (key %s -> %s); old outputs moved to %s", self.name, old_key, self.key, stale
        )

    def _manifest(self) -> dict:
        manifest = _read_manifest(self.dir)
        if manifest is None or manifest.get("key") != self.key:
            raise StoreError(f"stage {self.name!r} in {self.run.root} was reset by another run: open it again")
        return manifest

    def _update(self, change: Callable[[dict], None]) -> None:
        with self.run._locked():
            manifest = self._manifest()
            change(manifest)
            _write_json(self.dir / MANIFEST, manifest)

    def done(self) -> bool:
        """True if the stage finished under this key (then the caller has nothing to do)."""
        manifest = _read_manifest(self.dir)
        return bool(manifest and manifest.get("key") == self.key and manifest.get("finished"))

    def has_shard(self, shard: str) -> bool:
        """True if shard `shard` is recorded (and its file is there): a resumed run skips it."""
        recorded = shard in self._manifest()["shards"]
        return recorded and (self.dir / (shard + SHARD_SUFFIX)).is_file()

    def write_shard(self, shard: str, rows: list[dict], info: dict | None = None) -> None:
        """Write the rows of one shard (parquet, atomic), then record it in the manifest (atomic).

        `info` (JSON-able) is kept with the shard's record: figures that a stage's summary
        adds up over every shard, whichever process wrote it (see `shard_infos`).
        """
        _check_name("shard", shard)
        if self.done():
            raise StoreError(f"stage {self.name!r} in {self.run.root} is finished: move its folder away to redo it")
        where = f"stage {self.name!r}, shard {shard!r}"
        _write_parquet(self.dir / (shard + SHARD_SUFFIX), rows, where)
        record = {"rows": len(rows), **(info or {})}
        try:
            json.dumps(record)
        except (TypeError, ValueError) as e:
            raise StoreError(f"{where}: the shard info must be JSON-able: {e}") from None
        self._update(lambda m: m["shards"].__setitem__(shard, record))

    def shards(self) -> list[str]:
        """The recorded shard names, sorted (zero-pad numbers so that this is their order)."""
        return sorted(self._manifest()["shards"])

    def shard_infos(self) -> dict[str, dict]:
        """Each recorded shard's record: its row count and the `info` it was written with."""
        return dict(self._manifest()["shards"])

    def read(self) -> list[dict]:
        """All rows of the recorded shards, in shard-name order."""
        return _read_shards(self.dir, self._manifest(), self.name)

    def finish(self, summary: dict) -> None:
        """Mark the stage finished, with its summary (rows in/out, skipped by reason, seconds)."""
        try:
            json.dumps(summary)
        except (TypeError, ValueError) as e:
            raise StoreError(f"stage {self.name!r}: the summary must be JSON-able: {e}") from None

        def change(manifest: dict) -> None:
            manifest.update(finished=True, summary=summary, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

        self._update(change)

    def summary(self) -> dict:
        """The summary given to `finish` ({} while the stage is unfinished)."""
        return dict(self._manifest().get("summary") or {})

    def artifact(self, name: str) -> Path:
        """A sub-folder of the stage for non-row outputs (e.g. a trained model), created on demand."""
        if _check_name("artifact", name).endswith(SHARD_SUFFIX) or name == MANIFEST:
            raise StoreError(f"artifact name {name!r} would clash with the stage's shards or manifest")
        folder = self.dir / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
