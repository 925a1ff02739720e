"""What a run prints, fit for a terminal and for a log file of a run that goes on for days.

- `progress(...)`: a stage's progress. On a terminal a tqdm bar; when stderr is not a terminal (`nohup`, a SLURM
  job, `> run.log 2>&1`), one plain line every `FUSECHAT3_PROGRESS_SECONDS` seconds (30 by default) and one at the
  end, through logging, instead of a bar redrawn thousands of times into the file. The libraries' own bars
  (datasets, the Hub, transformers, TRL's trainer) are turned off then too: their environment switches are set by
  `setup`.
- `setup(...)`: logging for the command line, and a filter for third-party notices that do not concern a user of
  this project (vLLM's kernel registrations and CPU-backend notices, torch's NUMA and Triton notices: hundreds of
  lines in a toy demo's log). The filter's patterns are `NOISE`; `--verbose` shows everything.
- `stage_log(run, name)`: while a stage runs, every log record (ours, the libraries', the progress lines) also
  goes to `<run dir>/<stage>/log.txt`, appended, with a timestamp.

Only the standard library is imported here; tqdm when a bar is drawn.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("fusechat3.progress")

# (logger name prefix, message pattern) of notices dropped unless --verbose.
NOISE: tuple[tuple[str, str], ...] = (
    ("vllm", r"is already registered\. Overwriting"),
    ("vllm", r"Unknown vLLM environment variable detected"),
    ("vllm", r"doesn't allow to use `torch\.set_num_threads`"),
    ("vllm", r"is not found in LD_PRELOAD"),
    ("vllm", r"The global random seed is set to"),
    ("vllm", r"Reset SSM cache type"),
    ("vllm", r"Triton not installed or not compatible"),
    # What vLLM's CPU build says about the settings it needs there (`fusechat3.vllm_engine.CPU_DEFAULTS`).
    ("vllm", r"Triton is not installed\. triton-cpu is expected"),
    ("vllm", r"Model Runner V2 requires Triton"),
    ("vllm", r"Enforce eager set, disabling torch\.compile"),
    ("vllm", r"Inductor compilation was disabled by user settings"),
    ("torch", r"Triton not available"),
    ("ray.data", r"Progress bars disabled\. To enable"),  # the stage turns them off: it reports each shard itself
)
_NOISY_WARNINGS = (r".*torch\.distributed\.reduce_op.* is deprecated",)


def is_terminal() -> bool:
    """Whether progress bars can be drawn: stderr (where they go) is a terminal."""
    return sys.stderr.isatty()


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for prefix, pattern in NOISE:
            if record.name.startswith(prefix) and re.search(pattern, record.getMessage()):
                return False
        return True


_FILTER = _NoiseFilter()
_quiet = False  # set by `setup` unless --verbose


def quiet_third_party() -> None:
    """After `setup` (not --verbose): attach the noise filter to the handlers of the root, vllm, torch and ray loggers
    (a library may install its own handler when imported: call this again after importing it; attaching twice is
    a no-op)."""
    if not _quiet:
        return
    for name in (None, "vllm", "torch", "ray"):
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def setup(verbose: bool = False) -> None:
    """Logging for the command line: INFO (DEBUG with --verbose) to stderr; unless verbose, the noise filter,
    torch's C++ notices at error level only, and the libraries' progress bars off when stderr is no terminal."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # read when torch is imported: the "NUMA binding" lines
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    if not is_terminal():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the Hub's, and transformers' (it asks the Hub)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    quiet_third_party()


class LineProgress:
    """tqdm's interface as the stages use it (update, set_postfix_str, close, a context manager), writing one log
    line every `every` seconds and one at close instead of a bar."""

    def __init__(self, total: int, desc: str, unit: str, every: float) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic(), done=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if done:
            tail = f" in {elapsed:.0f}s"
        elif rate > 0 and self.total:
            tail = f", eta {(self.total - self.n) / rate:.0f}s"
        else:
            tail = ""
        extra = f" [{self.postfix}]" if self.postfix else ""
        logger.info(f"{self.desc}: {self.n}/{self.total} {self.unit}s{share}, {rate:.1f} {self.unit}/s{tail}{extra}")


def progress(total: int, desc: str, unit: str, disable: bool = False, nested: bool = False) -> Any:
    """A tqdm bar on a terminal, else a `LineProgress` (nothing at all with `disable`). A `nested` bar (one inside a
    stage's own, e.g. the reward model's batches inside the score stage's shards) is a bar on a terminal only."""
    disable = disable or (nested and not is_terminal())
    if is_terminal() or disable:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable)
    return LineProgress(total, desc, unit, float(os.environ.get("FUSECHAT3_PROGRESS_SECONDS", "30")))


class _AppendHandler(logging.Handler):
    """Appends each record to a file, opened and closed per record: a stage whose settings changed moves its old
    folder aside when it opens its store (`fusechat3.store`), and the next record then goes to the new folder."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.addFilter(_FILTER)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except Exception:  # logging must not stop a stage: report it the way logging does
            self.handleError(record)


# The stage messages (`fusechat3.run.log`): rich shows them on the console; this logger records them in the stage
# log files only (it passes nothing to the root logger, whose console handler would print them twice).
EVENTS = "fusechat3.events"
logging.getLogger(EVENTS).propagate = False
logging.getLogger(EVENTS).setLevel(logging.INFO)


@contextlib.contextmanager
def stage_log(folder: Path) -> Iterator[Path]:
    """Every log record while the block runs (at the root logger's level), and the stage messages, also appended
    to `folder`/log.txt with time and level."""
    path = folder / "log.txt"
    handler = _AppendHandler(path)
    events = logging.getLogger(EVENTS)
    for target in (logging.getLogger(), events):
        target.addHandler(handler)
    try:
        yield path
    finally:
        for target in (logging.getLogger(), events):
            target.removeHandler(handler)
