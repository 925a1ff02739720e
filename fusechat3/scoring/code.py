"""Code correctness: pull the program out of a response, check it statically, and run it against assert tests in
a sandbox.

Static analysis comes first: a program that does not compile is "syntax_error"; one in which pyflakes finds a name
used but never defined ("undefined_name"), looking at the program followed by its tests (the tests call its
functions), is not run at all. Only pyflakes' `UndefinedName` counts: a `from x import *` makes pyflakes report
`ImportStarUsage` instead (names may come from the star), so such programs are not flagged; builtins and module
magic names (`__file__`, `__name__`) are defined. The check covers function bodies too, including functions the
tests never call: the paper's rule is "passes static analysis *and* every test", as a linter would judge it. Other
pyflakes findings (unused imports, redefinitions) are style, not errors, and are ignored.

Model-written programs are untrusted. Each one runs in its own subprocess:

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
from util-linux, and libc's mount/prctl/capset through ctypes in the child).

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
problem, counted apart). They come from a small harness in the child, not from exit codes or stderr (a program
calling `sys.exit(0)` before the tests must not pass): a supervisor forks a worker that sets the limits, runs the
program and the tests and writes one line, tagged with a per-run random token, to a pipe reserved for it; if the
worker dies instead, the supervisor writes how (the CPU limit's signals: "timeout"; SIGKILL below it: the OOM
killer, "memory_error"). The program runs as a real module named `solution` (so its `if __name__ == "__main__":`
demo code does not run), and the tests run in its namespace.

Many programs run through `run_tests_many`, a bounded pool (see `pool_size`).
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
from collections.abc import Iterator, Sequence
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
# Extraction

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def _defines_function(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree))


def _defines_something(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) for node in ast.walk(tree))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a markdown text as (lower-case language tag, dedented body), in order."""
    return [(tag.lower(), textwrap.dedent(body)) for tag, body in _FENCE.findall(text)]


def extract_code(text: str) -> str | None:
    """The program in a response: the last ```python block, else the last untagged ``` block, else the whole
    text if it is Python that defines a function; None when there is none (blocks in other languages are
    not Python). Among blocks of one kind, the last that defines a function or class wins over later ones that
    do not: a response often ends with a block of usage examples or its own asserts, which is not the program."""
    if not isinstance(text, str):
        return None
    blocks = code_blocks(text)
    for wanted in (_PYTHON_TAGS, {""}):
        tagged = [body for tag, body in blocks if tag in wanted and body.strip()]
        if tagged:
            defining = [body for body in tagged if _defines_something(body)]
            return (defining or tagged)[-1]
    if blocks:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return text if _defines_function(tree) else None


# ---------------------------------------------------------------------------------------------------------------
# Static analysis


def undefined_names(code: str, tests: Sequence[str] = ()) -> list[str]:
    """Names pyflakes reports undefined in `code` followed by `tests` (sorted, distinct); [] when none.

    Both must parse (see `_static_check`). Only `UndefinedName` counts (see the module docstring)."""
    from pyflakes import checker, messages

    try:
        tree = ast.parse("\n".join([code, *tests]))
    except (SyntaxError, ValueError):
        # Each parses alone but not together (an unclosed construct at the end of the program): check the program.
        tree = ast.parse(code)
    try:
        found = checker.Checker(tree, filename="solution.py").messages
    except Exception as e:  # pyflakes is not the judge of last resort: let the run decide
        log.debug("pyflakes failed: %s", e)
        return []
    return sorted({m.message_args[0] for m in found if isinstance(m, messages.UndefinedName)})


def _compiles(source: str) -> bool:
    # A full compile, not only a parse: `return` or `break` outside their blocks are errors of the compiler.
    try:
        compile(source, "<check>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes in the source
        return False
    return True


def _static_check(code: str | None, tests: list[str]) -> str | None:
    if not isinstance(code, str) or not code.strip():
        return "no_code"
    if not _compiles(code):
        return "syntax_error"
    if not tests or not all(isinstance(t, str) and _compiles(t) for t in tests):
        return "bad_tests"
    if undefined_names(code, tests):
        return "undefined_name"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The child-side harness (runs in the sandboxed interpreter; standard library only)

_HARNESS = r"""
import json, os, resource, signal, sys, types

MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 24, 28, 38
# SECBIT_NOROOT, _NO_SETUID_FIXUP, _KEEP_CAPS_LOCKED, _NO_CAP_AMBIENT_RAISE, each with its lock.
SECUREBITS = 0xEF


def libc():
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)

    def call(name, *args):
        if getattr(lib, name)(*args) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, name + ": " + os.strerror(errno))

    return ctypes, lib, call


def private_dirs(dirs, size):
    # In the sandbox's own mount namespace: a fresh, size-capped tmpfs over each world-writable directory, so
    # that what the program writes there vanishes with it. The work dir, when it lay below one of them, is bound
    # back at its own path ("." still names it: the process's cwd is not moved by a mount above it).
    ctypes, _, call = libc()
    cwd = os.getcwd()
    for d in dirs:
        if os.path.isdir(d):
            options = ("mode=1777,size=%d" % size).encode()
            call("mount", b"tmpfs", d.encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), options)
    if not os.path.isdir(cwd):
        os.makedirs(cwd)
        call("mount", b".", cwd.encode(), None, ctypes.c_ulong(MS_BIND), None)
        os.chdir(cwd)


def drop_capabilities():
    # Root inside the user namespace would keep every capability there: enough to unmount the private
    # directories or remount /proc. The worker gives them all up, for good, before the program runs.
    ctypes, lib, call = libc()
    ulong = ctypes.c_ulong
    call("prctl", PR_SET_SECUREBITS, ulong(SECUREBITS), ulong(0), ulong(0), ulong(0))
    cap = 0
    while lib.prctl(PR_CAPBSET_DROP, ulong(cap), ulong(0), ulong(0), ulong(0)) == 0:  # EINVAL past the last one
        cap += 1
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    call("capset", header, (ctypes.c_uint32 * 6)())  # effective, permitted, inheritable: all empty
    call("prctl", PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0))


def run_program(limits, exec=exec, compile=compile, open=open, AssertionError=AssertionError,
                MemoryError=MemoryError, BaseException=BaseException):
    # The worker: limits first, then the program and its tests in one real module. The builtins it needs are
    # bound as defaults, before the program runs: a program that patches `builtins` cannot switch the tests off.
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    with open("tests.json", encoding="utf-8") as f:
        tests = json.load(f)
    # Compiled up front: after the program has run, nothing here looks up a builtin it could have replaced.
    checks = [compile(test, "<test %d>" % i, "exec") for i, test in enumerate(tests)]
    module = types.ModuleType("solution")
    module.__file__ = os.path.abspath("solution.py")
    sys.modules["solution"] = module
    phase = "solution"
    try:
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        phase = "tests"
        for check in checks:
            exec(check, module.__dict__)
    except AssertionError:
        return "test_failed" if phase == "tests" else "runtime_error"
    except MemoryError:
        module.__dict__.clear()
        return "memory_error"
    except BaseException:
        return "runtime_error"
    return "passed"


def death_verdict(status, usage, limits):
    # How the worker died, seen by the supervisor: no unshare or exit-code conventions in between.
    if not os.WIFSIGNALED(status):
        return "runtime_error"  # it left without a verdict (os._exit, a crash in C code)
    sig = os.WTERMSIG(status)
    cpu = usage.ru_utime + usage.ru_stime
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["RLIMIT_CPU"][0] - 0.5):
        return "timeout"
    # SIGKILL otherwise: the OOM killer, which picks a big process; a small one killed itself (os.killpg).
    if sig == signal.SIGKILL and usage.ru_maxrss * 1024 >= limits["RLIMIT_AS"][0] // 2:
        return "memory_error"
    return "runtime_error"


def main():
    # Locals of a function, not module globals: the program cannot just read the token from __main__.
    fd, config = int(sys.argv[1]), json.loads(sys.argv[2])
    token = sys.stdin.readline().strip()
    if config["private_dirs"]:
        private_dirs(config["private_dirs"], config["private_size"])
    # Bound before the program runs: it may patch the os module, not these locals.
    write, getpid, leave, fork, wait4 = os.write, os.getpid, os._exit, os.fork, os.wait4
    verdicts = ("passed", "test_failed", "runtime_error", "memory_error", "timeout")
    # Built before the program runs, so that reporting needs no allocation after a MemoryError.
    lines = {v: (token + " " + v + "\n").encode() for v in verdicts}
    pid = fork()
    if pid == 0:
        worker = getpid()
        if config["drop_capabilities"]:
            drop_capabilities()
        verdict = run_program(config["limits"])
        if getpid() == worker:  # not from a child the program forked and that ran on into the tests
            write(fd, lines[verdict])
        leave(0)  # skip atexit handlers and non-daemon threads of the program: the verdict is in
    _, status, usage = wait4(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        write(fd, lines[death_verdict(status, usage, config["limits"])])
    leave(0)


main()
"""

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
    problem = _static_check(code, tests)
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
                [*iso.prefix, iso.python, "-I", "-c", _HARNESS, str(write_fd), json.dumps(config)],
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
