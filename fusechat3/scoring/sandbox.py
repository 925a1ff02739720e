"""The sandbox that runs model-written Python programs against assert tests: `run_tests` and `run_tests_many`.

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

Verdicts: "passed", "test_failed" (an AssertionError in a test), "runtime_error", "timeout", "memory_error",
"syntax_error", "undefined_name", "no_code", and "bad_tests" (a test snippet that is not valid Python: a data
problem, counted apart; the four before it come from the static check). They come from a small harness in the
child (`fusechat3.scoring.sandbox_child`), not from exit codes or stderr (a program calling `sys.exit(0)` before
the tests must not pass): a supervisor forks a worker that sets the limits, runs the program and the tests and
writes one line, tagged with a per-run random token, to a pipe reserved for it; if the worker dies instead, the
supervisor writes how (the CPU limit's signals: "timeout"; SIGKILL below it: the OOM killer, "memory_error"). The program runs as a real module named `solution` (so its `if __name__ == "__main__":`
demo code does not run), and the tests run in its namespace.

Many programs run through `run_tests_many`, a bounded pool (see `pool_size`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources

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


def _read_verdict(fd: int, token: str) -> str | None:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    for line in data.decode("utf-8", "replace").splitlines():
        tag, _, verdict = line.partition(" ")
        if tag == token and verdict in VERDICTS:
            return verdict
    return None


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
    token = secrets.token_hex(16)
    config = {
        "limits": _limits(timeout_s, memory_mb, iso.nproc),
        "private_dirs": [d for d in PRIVATE_DIRS if os.path.isdir(d)] if iso.private_dirs else [],
        "private_size": FILE_SIZE_LIMIT,
        "drop_capabilities": bool(iso.prefix),  # root inside a user namespace
    }
    with _workdir(iso.user) as cwd:
        for name, text in (("solution.py", code), ("tests.json", json.dumps(list(tests)))):
            with open(os.path.join(cwd, name), "w", encoding="utf-8") as f:
                f.write(text)
        return _run_child(cwd, iso, token, timeout_s, config)


def _run_child(cwd: str, iso: _Isolation, token: str, timeout_s: float, config: dict) -> str:
    read_fd, write_fd = os.pipe()
    try:
        with open(os.path.join(cwd, "stderr.txt"), "wb") as stderr:
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
        timed_out = _feed_and_wait(proc, token, timeout_s)
        _kill_group(proc.pid)  # always: children the program forked must not outlive it
        proc.wait()
        verdict = _read_verdict(read_fd, token)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if timed_out:
        return "timeout"
    if verdict is None:
        # The supervisor itself died (it cannot start, or the program killed it where there is no PID namespace).
        log.debug("sandbox: no verdict, exit %s, stderr %s", proc.returncode, _tail(os.path.join(cwd, "stderr.txt")))
    return verdict or "runtime_error"


def _feed_and_wait(proc: subprocess.Popen, token: str, timeout_s: float) -> bool:
    """Give the harness its token, wait up to timeout_s; True if it timed out."""
    deadline = time.monotonic() + timeout_s
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"{token}\n".encode())
        proc.stdin.close()
    except OSError:
        pass  # the child is already gone; its exit status tells why
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return True
    return False


def _tail(path: str, size: int = 500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------------
# Many


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (taskset, cgroup cpusets)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pool_size(workers: int, jobs: int, memory_mb: int) -> int:
    """How many sandboxes `run_tests_many` runs at once: `workers` (0: one per usable CPU core), never more than
    there are jobs, and never more than fit in physical memory at `memory_mb` each (every program may use that
    much); at least 1."""
    size = workers or _cpu_count()
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        size = min(size, max(1, memory // (memory_mb * 1024 * 1024)))
    except (ValueError, OSError):
        pass
    return max(1, min(size, jobs))


def run_tests_many(
    jobs: list[tuple[str, list[str]]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
) -> list[tuple[bool, str]]:
    """`run_tests` over (code, tests) jobs in a bounded pool (`pool_size`); results in job order.

    Threads suffice: each waits on its own sandbox process, the work happens there."""
    jobs = list(jobs)
    if not jobs:
        return []
    _isolation()  # probe once, before the threads race to do it
    size = pool_size(workers, len(jobs), memory_mb)
    with ThreadPoolExecutor(max_workers=size) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], timeout_s=timeout_s, memory_mb=memory_mb), jobs))
