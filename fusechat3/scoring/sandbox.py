"""The sandbox that runs model-written Python programs against assert tests: `run_tests`, `run_batch` (many programs:
`run_tests_many` in `fusechat3.scoring.sandbox_pool`).

A program is first checked statically (`fusechat3.scoring.code_extract.static_verdict`); only one that passes
runs. Model-written programs are untrusted. Each one runs in its own subprocess:

- an isolated interpreter (`python -I`: no user site, no PYTHON* variables, no cwd on sys.path) with a minimal
  environment (no inherited secrets such as HF_TOKEN), in a fresh temporary directory deleted afterwards;
- its own session / process group, killed as a whole (SIGKILL) at the wall-clock timeout and after every run,
  so that forked children never outlive the check;
- resource limits (CPU seconds, address space, file size, open files, processes, no core dumps);
- where the OS allows (user namespaces): new user, network, PID and mount namespaces
  (`unshare -rnm --pid --fork --kill-child --mount-proc`): no network at all; every process the program starts
  dies with it even if it left the process group; a /proc that shows only its own processes (not the host's
  command lines and environments); a private, size-capped tmpfs over /tmp, /dev/shm and /var/tmp, so what it
  writes there vanishes with it; and no capability left to the program (root inside the namespace drops them all
  before the program runs, so it cannot undo those mounts);
- when this process runs as root, the unprivileged uid 65534 (nobody): it cannot write or delete the host's
  files outside world-writable directories, read root-only files, or signal the host's processes, and the
  process limit applies to it. If `sys.executable` is not reachable by that uid (a virtualenv under /root), a
  system interpreter of the same Python version is used for the programs instead, when there is one.

What works is probed once per process (a few sandbox runs) and logged; `describe_isolation()` says it in one line.
No well-kept library does this for plain subprocesses on a laptop and a cluster alike (the established
sandboxes need a container runtime or a service), so it is written here with the standard library (`unshare`
from util-linux, and libc's mount/prctl/capset through ctypes in the child, `sandbox_child`).

What the sandbox does NOT protect against (stated plainly):
- Without an unprivileged uid (an ordinary user on a laptop, or root with no usable interpreter for uid 65534),
  the program has that user's file access: it can write and delete the user's files outside its directory
  (outside the private tmpfs directories), e.g. the home directory. Use a dedicated account or a container.
- Without user namespaces: no network isolation, children that call setsid() escape the group kill, the
  program sees the host's processes (and the environment of those of its own uid), and the process limit of
  uid 65534 is shared by all the sandboxes running at once (a fork bomb starves its neighbours).
- Memory is limited per process (address space), not per sandbox: a program may hold up to
  PROCESS_LIMIT x memory_mb with many processes; disk writes in its directory are limited per file
  (FILE_SIZE_LIMIT), not in total. A cgroup would bound both (it needs root or systemd delegation: not done).
- Root without uid 65534 ignores the process limit, so a fork bomb is stopped only by the wall clock.
- The tests run in the program's own interpreter: a program that deliberately tampers with it (reads the
  harness's stack frames for the verdict token, patches the objects the tests compare, traces the test code)
  can fake a pass. Exiting early, printing "passed", writing fake verdict lines, killing its parent, or patching
  builtins and the os module cannot. The sandbox keeps the host safe from hostile programs; it keeps the
  verdict honest for buggy ones and for the usual shortcuts, not for a program written against this harness.
- `run_tests_many` runs several programs in one sandbox, one after the other (`batch_size`, 16 by default;
  recipe `scoring.code.batch_size`). Each starts in a fresh worker forked from a supervisor that runs no program,
  in an empty directory, with empty private tmp directories and nothing left running from the program before it
  (with a PID namespace). A program written against this harness could forge the verdicts of the programs after
  it in its batch, as it can its own; `batch_size=1` gives each program its own sandbox.

Verdicts: "passed", "test_failed" (an AssertionError in a test), "runtime_error", "timeout", "memory_error",
"syntax_error", "undefined_name", "no_code", and "bad_tests" (a test snippet that is not valid Python: a data
problem, counted apart; the four before it come from the static check). They come from a small harness in the
child (`fusechat3.scoring.sandbox_child`), not from exit codes or stderr (a program calling `sys.exit(0)` before
the tests must not pass): a supervisor forks a worker that sets the limits, runs the program and the tests and
writes one line, tagged with a per-run random token, to a pipe reserved for it; if the worker dies instead, the
supervisor writes how (the CPU limit's signals: "timeout"; SIGKILL below it: the OOM killer, "memory_error"). The program runs as a real module named `solution` (so its `if __name__ == "__main__":`
demo code does not run), and the tests run in its namespace.

Many programs run through `run_tests_many` (`fusechat3.scoring.sandbox_pool`): batches of programs per sandbox
(starting the namespaces and the interpreter costs more than most programs take to run), the batches in a bounded
pool (see `pool_size`) or as Ray CPU tasks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import IO

from fusechat3.scoring.code_extract import static_verdict

log = logging.getLogger(__name__)

VERDICTS = (
    "passed",
    "test_failed",
    "runtime_error",
    "timeout",
    "memory_error",
    "syntax_error",
    "undefined_name",
    "no_code",
    "bad_tests",
)
FILE_SIZE_LIMIT = 16 * 1024 * 1024  # a test program has no reason to write more; also each private tmpfs's size
OPEN_FILES_LIMIT = 128
PROCESS_LIMIT = 64  # per sandbox when it has its own user namespace (see _isolation)
NOBODY = 65534
BATCH_SIZE = 16  # programs per sandbox in run_tests_many
PRIVATE_DIRS = ("/tmp", "/dev/shm", "/var/tmp")  # world-writable: each gets a private tmpfs where namespaces allow
_UNSHARE_MOUNT = ("unshare", "-rnm", "--pid", "--fork", "--kill-child", "--mount-proc", "--")
_UNSHARE_FULL = ("unshare", "-rn", "--pid", "--fork", "--kill-child", "--")
_UNSHARE_NET = ("unshare", "-rn", "--")

# ---------------------------------------------------------------------------------------------------------------
# Isolation: probed once per process


@dataclass(frozen=True)
class _Isolation:
    prefix: tuple[str, ...]  # command prefix (unshare ...) or ()
    user: int | None  # uid/gid to run as (root only), or None
    nproc: bool  # whether to set RLIMIT_NPROC (see _isolation)
    python: str  # the interpreter programs run under

    @property
    def network_isolated(self) -> bool:
        return bool(self.prefix)

    @property
    def private_dirs(self) -> bool:
        return "--mount-proc" in self.prefix


def _interpreters(user: int | None) -> list[str]:
    """Interpreters to try for `user`: ours, then (for another uid, which may not reach a virtualenv under /root)
    system interpreters of the same Python version. The programs need only the standard library."""
    found = [sys.executable]
    if user is not None:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
            path = shutil.which(version, path=directory)
            if path and os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
                found.append(path)
    return found


def _probe(iso: _Isolation) -> bool:
    """Whether a trivial program passes under `iso` (the real harness, limits included)."""
    try:
        verdict = _sandboxed("x = 1\n", ["assert x == 1"], iso, timeout_s=30.0, memory_mb=1024)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("sandbox probe %s failed: %s", iso, e)
        return False
    if verdict != "passed":
        log.debug("sandbox probe %s: %s", iso, verdict)
    return verdict == "passed"


@cache
def _isolation() -> _Isolation:
    """The strongest isolation this machine allows, probed once (a few sandbox runs) and logged."""
    user, python = None, sys.executable
    if os.geteuid() == 0:
        python = next((p for p in _interpreters(NOBODY) if _probe(_Isolation((), NOBODY, False, p))), "")
        if python:
            user = NOBODY
            if python != sys.executable:
                log.info("sandbox: %s is not usable by uid %d: programs run under %s", sys.executable, NOBODY, python)
        else:
            python = sys.executable
            log.warning(
                "sandbox: running as root, and no python%d.%d is usable by uid %d: programs keep root's file access",
                *sys.version_info[:2],
                NOBODY,
            )
    prefix: tuple[str, ...] = ()
    if shutil.which("unshare"):
        for candidate in (_UNSHARE_MOUNT, _UNSHARE_FULL, _UNSHARE_NET):
            if _probe(_Isolation(candidate, user, False, python)):
                prefix = candidate
                break
    if not prefix:
        log.warning("sandbox: no network namespace available (unshare -rn failed): programs can reach the network")
    # RLIMIT_NPROC counts every process of the real uid. Set by the harness, i.e. after the user namespace
    # exists, it counts only that sandbox's processes; under the dedicated uid it counts the sandboxes running
    # at once; root ignores it; for an ordinary uid without a namespace it would count all the user's
    # processes (a GPU job has hundreds of threads) and break fork in innocent programs, so it is left off.
    nproc = user is not None or (bool(prefix) and os.geteuid() != 0)
    iso = _Isolation(prefix=prefix, user=user, nproc=nproc, python=python)
    log.info("sandbox isolation: %s", describe_isolation(iso))
    return iso


def describe_isolation(iso: _Isolation | None = None) -> str:
    """One line saying how programs are isolated on this machine (for logs and reports)."""
    iso = iso or _isolation()
    parts = [" ".join(iso.prefix[:-1]) if iso.prefix else "no namespaces"]
    parts.append(f"uid {iso.user}" if iso.user is not None else f"uid {os.geteuid()}")
    parts.append("RLIMIT_NPROC on" if iso.nproc else "RLIMIT_NPROC off")
    if iso.private_dirs:
        parts.append("private " + " ".join(PRIVATE_DIRS))
    if iso.python != sys.executable:
        parts.append(f"interpreter {iso.python}")
    return ", ".join(parts)


def network_isolated() -> bool:
    """Whether sandboxed programs run without network on this machine."""
    return _isolation().network_isolated


# ---------------------------------------------------------------------------------------------------------------
# Running


@cache
def _child_source() -> str:
    """The harness the child runs (`sandbox_child`), as source text.

    Passed with `-c`, not run by its path: under uid 65534 the interpreter may not be able to read this package's
    files (installed in a virtualenv under /root), and `-c` with `-I` puts no directory on sys.path at all."""
    return resources.files("fusechat3.scoring").joinpath("sandbox_child.py").read_text(encoding="utf-8")


def _child_env(cwd: str) -> dict[str, str]:
    # Nothing inherited: no tokens, no proxies, no CUDA or thread settings of the parent.
    return {"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def _workdir(user: int | None) -> Iterator[str]:
    """A fresh temporary directory, owned by the sandbox user, removed afterwards."""
    path = tempfile.mkdtemp(prefix="fusechat3-sandbox-")
    try:
        if user is not None:
            os.chown(path, user, user)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            log.warning("sandbox: could not remove %s", path)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _parse_verdicts(data: bytes, token: str, n: int) -> list[str | None]:
    """The verdict of each of `n` jobs from the lines "<token> <i> <verdict>" (None where there is none)."""
    found: list[str | None] = [None] * n
    for line in data.decode("utf-8", "replace").splitlines():
        tag, index, verdict = (line.split(" ", 2) + ["", ""])[:3]
        if tag == token and index.isdigit() and int(index) < n and verdict in VERDICTS and found[int(index)] is None:
            found[int(index)] = verdict
    return found


def _limits(timeout_s: float, memory_mb: int, nproc: bool) -> dict[str, tuple[int, int]]:
    """(soft, hard) limits by resource name, set by the worker in the child before the program runs."""
    cpu = math.ceil(timeout_s) + 1  # the wall clock usually fires first; this catches busy threads
    memory = memory_mb * 1024 * 1024
    limits = {
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        "RLIMIT_AS": (memory, memory),
        "RLIMIT_FSIZE": (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT),
        "RLIMIT_NOFILE": (OPEN_FILES_LIMIT, OPEN_FILES_LIMIT),
        "RLIMIT_CORE": (0, 0),
    }
    if nproc:
        limits["RLIMIT_NPROC"] = (PROCESS_LIMIT, PROCESS_LIMIT)
    return limits


def run_tests(code: str, tests: list[str], *, timeout_s: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Check `code` statically, then run it followed by the assert `tests` in the sandbox; (passed, verdict)."""
    problem = static_verdict(code, tests)
    if problem:
        return False, problem
    verdict = _sandboxed(code, tests, _isolation(), timeout_s, memory_mb)
    return verdict == "passed", verdict


def _sandboxed(code: str, tests: list[str], iso: _Isolation, timeout_s: float, memory_mb: int) -> str:
    """The verdict of one program (a batch of one)."""
    verdicts, timed_out = _sandboxed_batch([(code, tests)], iso, timeout_s, memory_mb)
    return verdicts[0] or ("timeout" if timed_out else "runtime_error")


def _sandboxed_batch(
    jobs: list[tuple[str, list[str]]], iso: _Isolation, timeout_s: float, memory_mb: int
) -> tuple[list[str | None], bool]:
    """Run the jobs one after the other in one sandbox: (verdict or None for each, whether the batch's own clock
    ran out). The child gives each program its own wall clock; the batch's clock here is a backstop."""
    token = secrets.token_hex(16)
    config = {
        "limits": _limits(timeout_s, memory_mb, iso.nproc),
        "timeout_s": timeout_s,
        "private_dirs": [d for d in PRIVATE_DIRS if os.path.isdir(d)] if iso.private_dirs else [],
        "private_size": FILE_SIZE_LIMIT,
        "drop_capabilities": bool(iso.prefix),  # root inside a user namespace
    }
    payload = f"{token}\n{json.dumps([[code, list(tests)] for code, tests in jobs])}\n".encode()
    with _workdir(iso.user) as cwd:
        data, timed_out = _run_child(cwd, iso, payload, len(jobs) * (timeout_s + 1) + 10, config)
    # A job without a verdict: the supervisor itself died (it cannot start, or a program killed it where there is
    # no PID namespace), or the batch's clock ran out.
    return _parse_verdicts(data, token, len(jobs)), timed_out


# What a batch's programs may write to the verdict pipe is read and dropped past this size.
_PIPE_KEEP = 1 << 20


def _run_child(cwd: str, iso: _Isolation, payload: bytes, timeout_s: float, config: dict) -> tuple[bytes, bool]:
    """Start the harness, feed it `payload`, collect what reaches the verdict pipe until it exits or `timeout_s`
    passes; then kill its whole process group. (data, whether the clock ran out)."""
    read_fd, write_fd = os.pipe()
    data = bytearray()
    # stderr goes outside the work dir, which the harness empties between programs.
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                [*iso.prefix, iso.python, "-I", "-c", _child_source(), str(write_fd), json.dumps(config)],
                cwd=cwd,
                env=_child_env(cwd),
                user=iso.user,
                group=iso.user,
                extra_groups=[] if iso.user is not None else None,
                start_new_session=True,  # its own process group: killed as a whole below
                pass_fds=(write_fd,),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            os.close(write_fd)
            write_fd = -1
            deadline = time.monotonic() + timeout_s
            try:
                assert proc.stdin is not None
                proc.stdin.write(payload)
                proc.stdin.close()
            except OSError:
                pass  # the child is already gone; its exit status tells why
            # Read while it runs: a program that fills the pipe must not block the verdicts behind it.
            timed_out = False
            while True:
                ready, _, _ = select.select([read_fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
                if ready:
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        break  # every writer is gone
                    if len(data) < _PIPE_KEEP:
                        data += chunk
                elif proc.poll() is not None:
                    break  # exited, and a leftover (no PID namespace) holds the pipe open
                elif time.monotonic() >= deadline:
                    timed_out = True
                    break
            _kill_group(proc.pid)  # always: children the program forked must not outlive it
            proc.wait()
            os.set_blocking(read_fd, False)
            with contextlib.suppress(BlockingIOError):
                while len(data) < _PIPE_KEEP and (chunk := os.read(read_fd, 65536)):
                    data += chunk
            if proc.returncode != 0 and not timed_out:
                log.debug("sandbox: exit %s, stderr %s", proc.returncode, _tail(stderr))
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
    return bytes(data), timed_out


def _tail(f: IO[bytes], size: int = 500) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - size))
    return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------------
# Many


def run_batch(jobs: list[tuple[str, list[str]]], timeout_s: float, memory_mb: int) -> list[tuple[bool, str]]:
    """(passed, verdict) of each (code, tests) job, run one after the other in one sandbox; a job the batch gives
    no verdict (its supervisor died: a program killed it where there is no PID namespace) is run again alone.
    A top-level function of plain data: what `sandbox_pool.run_tests_many` hands to a thread here or to a Ray CPU
    task."""
    iso = _isolation()
    verdicts, timed_out = _sandboxed_batch(jobs, iso, timeout_s, memory_mb)
    out = []
    for job, verdict in zip(jobs, verdicts, strict=True):
        if verdict is None and len(jobs) > 1:
            verdict = _sandboxed(*job, iso, timeout_s, memory_mb)
        verdict = verdict or ("timeout" if timed_out else "runtime_error")
        out.append((verdict == "passed", verdict))
    return out
