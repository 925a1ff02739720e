"""Code correctness: pull the program out of a response and run it against assert tests in a sandbox.

Model-written programs are untrusted. Each one runs in its own subprocess:

- an isolated interpreter (`python -I`: no user site, no PYTHON* variables, no cwd on sys.path) with a minimal
  environment (no inherited secrets such as HF_TOKEN), in a fresh temporary directory deleted afterwards;
- its own session / process group, killed as a whole (SIGKILL) at the wall-clock timeout and after every run,
  so that forked children never outlive the check;
- resource limits (CPU seconds, address space, file size, open files, processes, no core dumps);
- where the OS allows: new network and PID namespaces (`unshare -rn --pid --fork --kill-child`, no network at
  all, and every process the program starts dies with it even if it left the process group), and, when this
  process runs as root, the unprivileged uid 65534. What works is probed once and logged.

No well-kept library does this for plain subprocesses on a laptop and a cluster alike (the established
sandboxes need a container runtime or a service), so it is written here with the standard library.

Verdicts: "passed", "test_failed" (an AssertionError in a test), "runtime_error", "timeout", "memory_error",
"syntax_error", "no_code", and "bad_tests" (a test snippet that is not valid Python: a data problem, counted
apart). They come from a small harness in the child, not from exit codes or stderr (a program calling
`sys.exit(0)` before the tests must not pass): a supervisor forks a worker that sets the limits, runs the program
and the tests and writes one line, tagged with a per-run random token, to a pipe reserved for it; if the worker
dies instead, the supervisor writes how (the CPU limit's signals: "timeout"; SIGKILL below it: the OOM killer,
"memory_error"). The program runs as a real module named `solution` (so its `if __name__ == "__main__":` demo
code does not run), and the tests run in its namespace.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

log = logging.getLogger(__name__)

VERDICTS = (
    "passed",
    "test_failed",
    "runtime_error",
    "timeout",
    "memory_error",
    "syntax_error",
    "no_code",
    "bad_tests",
)
FILE_SIZE_LIMIT = 16 * 1024 * 1024  # a test program has no reason to write more
OPEN_FILES_LIMIT = 128
PROCESS_LIMIT = 64  # per sandbox when it has its own user namespace (see _isolation)
NOBODY = 65534
_UNSHARE_FULL = ("unshare", "-rn", "--pid", "--fork", "--kill-child", "--")
_UNSHARE_NET = ("unshare", "-rn", "--")

# ---------------------------------------------------------------------------------------------------------------
# Extraction

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def _defines_function(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree))


def extract_code(text: str) -> str | None:
    """The program in a response: the last ```python block, else the last untagged ``` block, else the whole
    text if it is Python that defines a function; None when there is none (blocks in other languages are
    not Python)."""
    if not isinstance(text, str):
        return None
    blocks = [(tag.lower(), textwrap.dedent(body)) for tag, body in _FENCE.findall(text)]
    for wanted in (_PYTHON_TAGS, {""}):
        tagged = [body for tag, body in blocks if tag in wanted and body.strip()]
        if tagged:
            return tagged[-1]
    if blocks:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return text if _defines_function(tree) else None


# ---------------------------------------------------------------------------------------------------------------
# The child-side harness (runs in the sandboxed interpreter; standard library only)

_HARNESS = r"""
import json, os, resource, signal, sys, types


def run_program(limits):
    # The worker: limits first, then the program and its tests in one real module.
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    with open("tests.json", encoding="utf-8") as f:
        tests = json.load(f)
    module = types.ModuleType("solution")
    module.__file__ = os.path.abspath("solution.py")
    sys.modules["solution"] = module
    phase = "solution"
    try:
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        phase = "tests"
        for i, test in enumerate(tests):
            exec(compile(test, "<test %d>" % i, "exec"), module.__dict__)
    except AssertionError:
        return "test_failed" if phase == "tests" else "runtime_error"
    except MemoryError:
        module.__dict__.clear()
        return "memory_error"
    except BaseException:
        return "runtime_error"
    return "passed"


def death_verdict(status, usage, cpu_soft):
    # How the worker died, seen by the supervisor: no unshare or exit-code conventions in between.
    if not os.WIFSIGNALED(status):
        return "runtime_error"  # it left without a verdict (os._exit, a crash in C code)
    sig = os.WTERMSIG(status)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cpu_soft - 0.5):
        return "timeout"
    return "memory_error" if sig == signal.SIGKILL else "runtime_error"  # SIGKILL otherwise: the OOM killer


def main():
    # Locals of a function, not module globals: the program cannot just read the token from __main__.
    fd, limits = int(sys.argv[1]), json.loads(sys.argv[2])
    token = sys.stdin.readline().strip()
    verdicts = ("passed", "test_failed", "runtime_error", "memory_error", "timeout")
    # Built before the program runs, so that reporting needs no allocation after a MemoryError.
    lines = {v: (token + " " + v + "\n").encode() for v in verdicts}
    pid = os.fork()
    if pid == 0:
        worker = os.getpid()
        verdict = run_program(limits)
        if os.getpid() == worker:  # not from a child the program forked and that ran on into the tests
            os.write(fd, lines[verdict])
        os._exit(0)  # skip atexit handlers and non-daemon threads of the program: the verdict is in
    _, status, usage = os.wait4(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        os.write(fd, lines[death_verdict(status, usage, limits["RLIMIT_CPU"][0])])
    os._exit(0)


main()
"""

# ---------------------------------------------------------------------------------------------------------------
# Isolation: probed once per process


@dataclass(frozen=True)
class _Isolation:
    prefix: tuple[str, ...]  # command prefix (unshare ...) or ()
    user: int | None  # uid/gid to run as (root only), or None
    nproc: bool  # whether to set RLIMIT_NPROC (see _isolation)

    @property
    def network_isolated(self) -> bool:
        return bool(self.prefix)


def _probe(prefix: tuple[str, ...], user: int | None) -> bool:
    code = "import socket\ntry:\n socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError: pass"
    try:
        with _workdir(user) as cwd:
            done = subprocess.run(
                [*prefix, sys.executable, "-I", "-c", code],
                cwd=cwd,
                env=_child_env(cwd),
                user=user,
                group=user,
                extra_groups=[] if user is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=30,
            )
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("sandbox probe %s as %s failed: %s", prefix, user, e)
        return False
    if done.returncode != 0:
        log.debug("sandbox probe %s as %s: exit %s: %s", prefix, user, done.returncode, done.stderr[-300:])
    return done.returncode == 0


@cache
def _isolation() -> _Isolation:
    """The strongest isolation this machine allows, probed once (a few subprocess starts) and logged."""
    user = NOBODY if os.geteuid() == 0 and _probe((), NOBODY) else None
    if os.geteuid() == 0 and user is None:
        log.warning(
            "sandbox: running as root, and %s is not usable by uid %d: programs keep root's file access",
            sys.executable,
            NOBODY,
        )
    prefix: tuple[str, ...] = ()
    for candidate in (_UNSHARE_FULL, _UNSHARE_NET):
        if shutil.which(candidate[0]) and _probe(candidate, user):
            prefix = candidate
            break
    if not prefix:
        log.warning("sandbox: no network namespace available (unshare -rn failed): programs can reach the network")
    # RLIMIT_NPROC counts every process of the real uid. Set by the harness, i.e. after the user namespace
    # exists, it counts only that sandbox's processes; under the dedicated uid it counts the sandboxes running
    # at once; root ignores it; for an ordinary uid without a namespace it would count all the user's
    # processes (a GPU job has hundreds of threads) and break fork in innocent programs, so it is left off.
    nproc = user is not None or (bool(prefix) and os.geteuid() != 0)
    iso = _Isolation(prefix=prefix, user=user, nproc=nproc)
    log.info("sandbox isolation: %s", describe_isolation(iso))
    return iso


def describe_isolation(iso: _Isolation | None = None) -> str:
    """One line saying how programs are isolated on this machine (for logs and reports)."""
    iso = iso or _isolation()
    parts = [" ".join(iso.prefix[:-1]) if iso.prefix else "no namespaces"]
    parts.append(f"uid {iso.user}" if iso.user is not None else f"uid {os.geteuid()}")
    parts.append("RLIMIT_NPROC on" if iso.nproc else "RLIMIT_NPROC off")
    return ", ".join(parts)


def network_isolated() -> bool:
    """Whether sandboxed programs run without network on this machine."""
    return _isolation().network_isolated


# ---------------------------------------------------------------------------------------------------------------
# Running


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


def _static_check(code: str | None, tests: list[str]) -> str | None:
    if not isinstance(code, str) or not code.strip():
        return "no_code"
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: NUL bytes in the source
        return "syntax_error"
    if not tests or not all(isinstance(t, str) for t in tests):
        return "bad_tests"
    for test in tests:
        try:
            ast.parse(test)
        except (SyntaxError, ValueError):
            return "bad_tests"
    return None


def run_tests(code: str, tests: list[str], *, timeout_s: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run `code` followed by the assert `tests` in the sandbox; returns (passed, verdict)."""
    problem = _static_check(code, tests)
    if problem:
        return False, problem
    iso = _isolation()
    token = secrets.token_hex(16)
    with _workdir(iso.user) as cwd:
        for name, text in (("solution.py", code), ("tests.json", json.dumps(list(tests)))):
            with open(os.path.join(cwd, name), "w", encoding="utf-8") as f:
                f.write(text)
        verdict = _run_child(cwd, iso, token, timeout_s, _limits(timeout_s, memory_mb, iso.nproc))
    return verdict == "passed", verdict


def _run_child(cwd: str, iso: _Isolation, token: str, timeout_s: float, limits: dict[str, tuple[int, int]]) -> str:
    read_fd, write_fd = os.pipe()
    try:
        with open(os.path.join(cwd, "stderr.txt"), "wb") as stderr:
            proc = subprocess.Popen(
                [*iso.prefix, sys.executable, "-I", "-c", _HARNESS, str(write_fd), json.dumps(limits)],
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


def run_tests_many(
    jobs: list[tuple[str, list[str]]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 0,
) -> list[tuple[bool, str]]:
    """`run_tests` over (code, tests) jobs, `workers` at a time (0: one per CPU); results in job order."""
    jobs = list(jobs)
    if not jobs:
        return []
    _isolation()  # probe once, before the threads race to do it
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], timeout_s=timeout_s, memory_mb=memory_mb), jobs))
