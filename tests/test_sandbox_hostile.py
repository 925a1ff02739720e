"""Hostile programs against the real sandbox (fusechat3.scoring.sandbox): each is contained, gets a verdict, and
leaves the host unharmed (files, processes, the test runner).

Every program defines a *wrong* `add` (a - b) after its attack, so that an honest judge says "test_failed" once
the tests run, and an attack that skipped or forged the tests would show as "passed": no program here may pass.
Attacks that end the program first get "runtime_error" (an exception, an early exit), "timeout" or
"memory_error". They run together through `run_tests_many`: batches of up to 16 programs per sandbox, two sandboxes
at a time (about 10 s).

What is guaranteed depends on the machine (`describe_isolation()`); a case this machine cannot contain is skipped
with the reason and NOT run (kill(-1) without a PID namespace would reach the host's processes):
- files outside the work dir: protected when programs run as uid 65534 (the runner is root and an interpreter
  is usable by that uid); as an ordinary user without a dedicated account, the program has that user's file
  access (its home directory included) — the documented limit. /tmp, /dev/shm and /var/tmp are private tmpfs
  mounts where user namespaces exist, so writing there is allowed and vanishes;
- /etc/shadow: unreadable unless the programs keep root's file access (root without uid 65534);
- the fork bomb: bounded by the process limit, which root without uid 65534 ignores, and which without a user
  namespace all sandboxes of uid 65534 share;
- the secret in another process's environment: hidden by the private /proc or by uid 65534;
- network, setsid/daemon escapes, kill(-1): need the user/network/PID namespaces.
The verdict itself holds against exits, prints, fake verdict lines, killing the parent and patched builtins, but
not against a program that reads the harness's frames for the token: `test_known_limit_frame_walking_forgery`
pins that limit (strict xfail).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from procs import gone_soon, sleepers

from fusechat3.scoring import sandbox
from fusechat3.scoring.code import run_tests_many

pytestmark = pytest.mark.integration

WRONG = "\ndef add(a, b):\n    return a - b\n"
TESTS = ["assert add(1, 2) == 3"]
TIMEOUT_S = 3.0  # generous: the machine may be busy, and the fork bomb runs beside the others
MEMORY_MB = 256
SECRET_NAME = "FUSECHAT3_HOSTILE_TEST_SECRET"


def _marker() -> str:
    return f"{secrets.randbelow(90_000) + 10_000}.{secrets.randbelow(900_000) + 100_000}"


@dataclass
class Case:
    program: str
    expected: tuple[str, ...]  # acceptable verdicts (one, except where the machine makes a race possible)
    skip: str | None = None  # why this machine cannot contain it; then it is not run
    host_ok: Callable[[], bool] = lambda: True  # the host is unharmed (checked after the batch)
    tests: list[str] = field(default_factory=lambda: list(TESTS))


@dataclass
class Host:
    """What the attacks aim at, made before the batch by the test runner."""

    shared: Path  # a world-writable directory (mode 777) under /tmp
    shared_canary: Path
    home_dir: Path  # a directory (777) in the runner's home, which is not world-readable (/root: 700)
    home_canary: Path
    port: int  # a localhost listener
    bystander: subprocess.Popen  # a host process (same uid as the runner), with the secret in its environment
    bystander_marker: str


def _cases(h: Host, iso) -> dict[str, Case]:
    pid_ns = "--pid" in iso.prefix
    root_unconfined = os.geteuid() == 0 and iso.user is None and not iso.prefix
    no_pid_ns = f"no PID namespace here ({sandbox.describe_isolation()})"
    own_files = f"programs keep this user's file access here ({sandbox.describe_isolation()}): documented limit"
    m = {name: _marker() for name in ("bomb", "spawn", "shell", "session", "setsid", "daemon", "scratch")}
    canaries_intact = lambda: h.shared_canary.read_text() == "canary" and h.home_canary.read_text() == "canary"  # noqa: E731
    bystander_alive = lambda: h.bystander.poll() is None and bool(sleepers(h.bystander_marker))  # noqa: E731
    c: dict[str, Case] = {}

    # --- resources -------------------------------------------------------------------------------------------
    c["fork_bomb"] = Case(
        textwrap.dedent(
            f"""
            import os, time
            n = 0
            while True:  # every child forks on too; some become visible sleepers
                try:
                    pid = os.fork()
                except OSError:
                    time.sleep(0.05)  # at the process limit: do not hog the CPU of the other programs
                    continue
                if pid == 0:
                    n += 1
                    if n % 4 == 0:
                        os.execvp("sleep", ["sleep", "{m["bomb"]}"])
            """
        )
        + WRONG,
        ("timeout",),
        skip=None
        if iso.nproc and iso.prefix
        else f"no process limit of its own here ({sandbox.describe_isolation()}): documented limit",
        host_ok=lambda: gone_soon(m["bomb"]),
    )
    c["infinite_loop"] = Case("while True:\n    pass\n" + WRONG, ("timeout",))
    c["sleep"] = Case("import time\ntime.sleep(60)\n" + WRONG, ("timeout",))
    c["memory_at_once"] = Case("x = bytearray(8 * 1024**3)\n" + WRONG, ("memory_error",))
    c["memory_growing"] = Case(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n" + WRONG, ("memory_error",)
    )
    c["stdout_flood"] = Case("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n" + WRONG, ("timeout",))
    # stderr goes to a file in the work dir: cut at the file-size limit (EFBIG), long before the timeout.
    c["stderr_flood"] = Case(
        "import sys\nfor _ in range(1024):\n    sys.stderr.write('x' * 65536)\n" + WRONG, ("runtime_error",)
    )
    c["disk_filler"] = Case(
        "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n" + WRONG, ("runtime_error",)
    )
    c["fd_exhaustion"] = Case(
        textwrap.dedent(
            """
            import os
            fds = []
            try:
                while True:
                    fds.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                if len(fds) < 128:
                    raise  # EMFILE at the sandbox's limit, not the host's
            """
        )
        + WRONG,
        ("runtime_error",),
    )

    # --- files outside the work dir ----------------------------------------------------------------------------
    c["write_and_delete_in_shared_dir"] = Case(
        f"import os\nos.remove({str(h.shared_canary)!r})\nopen({str(h.shared / 'pwned')!r}, 'w').write('x')\n" + WRONG,
        ("runtime_error",),
        skip=None if iso.private_dirs else f"no private /tmp here ({sandbox.describe_isolation()})",
        host_ok=lambda: canaries_intact() and not (h.shared / "pwned").exists(),
    )
    c["write_home"] = Case(
        f"open({str(h.home_dir / 'pwned')!r}, 'w').write('x')\n" + WRONG,
        ("runtime_error",),
        skip=None if iso.user is not None else own_files,
        host_ok=lambda: not (h.home_dir / "pwned").exists(),
    )
    c["delete_in_home"] = Case(
        f"import os, shutil\nos.remove({str(h.home_canary)!r})\nshutil.rmtree({str(h.home_dir)!r})\n" + WRONG,
        ("runtime_error",),
        skip=None if iso.user is not None else own_files,
        host_ok=canaries_intact,
    )
    # Scratch files in /tmp and /dev/shm are legitimate: they work, and vanish with the program.
    scratch = [Path(d) / f"fusechat3-hostile-{m['scratch']}" for d in ("/tmp", "/dev/shm") if os.path.isdir(d)]
    c["scratch_in_tmp"] = Case(
        "".join(f"open({str(p)!r}, 'w').write('s')\nassert open({str(p)!r}).read() == 's'\n" for p in scratch) + WRONG,
        ("test_failed",),
        skip=None if iso.private_dirs else f"no private /tmp here ({sandbox.describe_isolation()})",
        host_ok=lambda: not any(p.exists() for p in scratch),
    )
    shadow_protected = os.path.exists("/etc/shadow") and (iso.user is not None or os.geteuid() != 0)
    c["read_shadow"] = Case(
        "print(open('/etc/shadow').read())\n" + WRONG,
        ("runtime_error",),
        skip=None if shadow_protected else f"/etc/shadow absent or readable: {own_files}",
    )

    # --- secrets and network -----------------------------------------------------------------------------------
    c["steal_secret"] = Case(
        STEAL_SECRET + "loot()\n" + WRONG,
        ("test_failed",),
        tests=["assert loot(), 'nothing found'"],  # would pass only if the secret were visible
        skip=None
        if iso.private_dirs or iso.user is not None
        else f"the program sees this user's processes here ({sandbox.describe_isolation()}): documented limit",
    )
    c["network"] = Case(
        f"import socket\nsocket.create_connection(('127.0.0.1', {h.port}), timeout=2).close()\n" + WRONG,
        ("runtime_error",),
        skip=None if iso.network_isolated else f"no network namespace here ({sandbox.describe_isolation()})",
    )

    # --- processes -----------------------------------------------------------------------------------------------
    # The worker's parent is the harness's supervisor: PID 1 of the sandbox's namespace, which a signal from
    # inside cannot kill; without the namespace it dies and the verdict may be lost (never "passed").
    c["kill_parent"] = Case(
        "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(0.2)\n" + WRONG,
        ("test_failed",) if pid_ns else ("test_failed", "runtime_error"),
        host_ok=bystander_alive,
    )
    c["kill_everything_visible"] = Case(
        textwrap.dedent(
            """
            import os, signal
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != os.getpid():
                    try:
                        os.kill(int(entry), signal.SIGKILL)
                    except OSError:
                        pass
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass  # nothing it may signal, besides itself and the supervisor
            """
        )
        + WRONG,
        ("test_failed",),
        skip=None if pid_ns else no_pid_ns,
        host_ok=bystander_alive,
    )
    c["kill_own_group"] = Case(
        "import os, signal\nos.killpg(os.getpgrp(), signal.SIGKILL)\n" + WRONG, ("runtime_error",)
    )
    c["spawn_subprocess"] = Case(
        f"import subprocess\nsubprocess.Popen(['sleep', '{m['spawn']}'])\n"
        f"subprocess.Popen('sleep {m['shell']} &', shell=True)\n" + WRONG,
        ("test_failed",),
        host_ok=lambda: gone_soon(m["spawn"], m["shell"]),
    )
    c["subprocess_new_session"] = Case(
        f"import subprocess\nsubprocess.Popen(['sleep', '{m['session']}'], start_new_session=True)\n" + WRONG,
        ("test_failed",),
        skip=None if pid_ns else no_pid_ns,
        host_ok=lambda: gone_soon(m["session"]),
    )
    c["setsid_child"] = Case(
        f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '{m['setsid']}'])\n" + WRONG,
        ("test_failed",),
        skip=None if pid_ns else no_pid_ns,
        host_ok=lambda: gone_soon(m["setsid"]),
    )
    c["double_fork_daemon"] = Case(
        textwrap.dedent(
            f"""
            import os
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execvp("sleep", ["sleep", "{m["daemon"]}"])
                os._exit(0)
            os.wait()
            """
        )
        + WRONG,
        ("test_failed",),
        skip=None if pid_ns else no_pid_ns,
        host_ok=lambda: gone_soon(m["daemon"]),
    )

    # --- limits ----------------------------------------------------------------------------------------------------
    for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC"):
        skip = None
        if root_unconfined:
            skip = "root without namespaces keeps CAP_SYS_RESOURCE: it may raise any limit (documented limit)"
        elif name == "RLIMIT_NPROC" and not iso.nproc:
            skip = "no process limit set on this machine"
        c[f"raise_{name.lower()}"] = Case(
            f"import resource as r\nr.setrlimit(r.{name}, (r.RLIM_INFINITY, r.RLIM_INFINITY))\n" + WRONG,
            ("runtime_error",),
            skip=skip,
        )

    # --- the verdict -----------------------------------------------------------------------------------------------
    fakes = (
        "import os, sys\nfd = int(sys.argv[1])\n"
        "for line in (b'passed\\n', b'0 passed\\n', os.urandom(16).hex().encode() + b' passed\\n'):\n"
        "    os.write(fd, line)\n"
        "print('passed')\nprint('passed', file=sys.stderr)\n"
    )
    c["fake_verdict_lines"] = Case(fakes + WRONG, ("test_failed",))
    c["fake_verdict_lines_then_exit"] = Case(fakes + "os._exit(0)\n" + WRONG, ("runtime_error",))
    c["sys_exit_before_tests"] = Case("import sys\nsys.exit(0)\n" + WRONG, ("runtime_error",))
    c["os_exit_before_tests"] = Case("import os\nos._exit(0)\n" + WRONG, ("runtime_error",))
    c["atexit_and_excepthooks"] = Case(
        "import atexit, os, sys, threading\natexit.register(os._exit, 0)\n"
        "sys.excepthook = threading.excepthook = lambda *a: os._exit(0)\n" + WRONG,
        ("test_failed",),
    )
    c["patched_builtins"] = Case(
        "import builtins\nbuiltins.exec = builtins.compile = builtins.enumerate = lambda *a, **k: ()\n"
        "builtins.AssertionError = type('NotAnAssertion', (Exception,), {})\n" + WRONG,
        ("test_failed",),
    )
    c["patched_os"] = Case(
        "import os\n_write = os.write\nos.write = lambda fd, data: _write(fd, data.replace(b'test_failed', b'passed'))\n"
        "os._exit = lambda code: None\nos.getpid = lambda: 1\n" + WRONG,
        ("test_failed",),
    )
    c["verdict_pipe_and_stdio_replaced"] = Case(
        "import os, sys\nnull = os.open('/dev/null', os.O_WRONLY)\nos.dup2(null, int(sys.argv[1]))\n"
        "for n in (0, 1, 2):\n    os.close(n)\n" + WRONG,
        ("runtime_error",),
    )
    c["frame_walking_forgery"] = Case(
        textwrap.dedent(
            """
            import os, sys
            frame = sys._getframe()
            while frame is not None and "lines" not in frame.f_locals:
                frame = frame.f_back
            os.write(int(sys.argv[1]), frame.f_locals["lines"]["passed"])
            os._exit(0)
            """
        )
        + WRONG,
        ("test_failed", "runtime_error"),  # what a harness out of the program's reach would give
    )
    return c


# Looks for the secret's name in its own environment and in every /proc/<pid>/environ and cmdline it can read,
# and leaves what it found in its work dir (which is deleted).
STEAL_SECRET = textwrap.dedent(
    f"""
    import os

    def loot():
        found = [k for k in os.environ if k == "{SECRET_NAME}"]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                for name in ("environ", "cmdline"):
                    try:
                        with open("/proc/" + entry + "/" + name, "rb") as f:
                            if b"{SECRET_NAME}=" in f.read():
                                found.append(entry + "/" + name)
                    except OSError:
                        pass
        with open("loot.txt", "w") as f:
            f.write(repr(found))
        return found
    """
)

CASE_NAMES = [
    "fork_bomb",
    "infinite_loop",
    "sleep",
    "memory_at_once",
    "memory_growing",
    "stdout_flood",
    "stderr_flood",
    "disk_filler",
    "fd_exhaustion",
    "write_and_delete_in_shared_dir",
    "write_home",
    "delete_in_home",
    "scratch_in_tmp",
    "read_shadow",
    "steal_secret",
    "network",
    "kill_parent",
    "kill_everything_visible",
    "kill_own_group",
    "spawn_subprocess",
    "subprocess_new_session",
    "setsid_child",
    "double_fork_daemon",
    "raise_rlimit_as",
    "raise_rlimit_cpu",
    "raise_rlimit_nproc",
    "fake_verdict_lines",
    "fake_verdict_lines_then_exit",
    "sys_exit_before_tests",
    "os_exit_before_tests",
    "atexit_and_excepthooks",
    "patched_builtins",
    "patched_os",
    "verdict_pipe_and_stdio_replaced",
]


@dataclass
class Outcome:
    host: Host
    cases: dict[str, Case]
    verdicts: dict[str, tuple[bool, str]]
    seconds: float
    workdirs: list[str]
    listener: socket.socket


@pytest.fixture(scope="module")
def outcome():
    iso = sandbox._isolation()
    secret = secrets.token_hex(16)
    shared = Path(tempfile.mkdtemp(prefix="fusechat3-hostile-", dir="/tmp"))
    home_dir = Path(tempfile.mkdtemp(prefix=".fusechat3-hostile-", dir=Path.home()))
    bystander_marker = _marker()
    bystander = subprocess.Popen(["sleep", bystander_marker], env={"PATH": "/usr/bin:/bin", SECRET_NAME: secret})
    listener = socket.socket()
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    try:
        for d in (shared, home_dir):
            d.chmod(0o777)  # writable by anyone who can reach it
            (d / "canary").write_text("canary")
            (d / "canary").chmod(0o666)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host = Host(
            shared,
            shared / "canary",
            home_dir,
            home_dir / "canary",
            listener.getsockname()[1],
            bystander,
            bystander_marker,
        )
        cases = _cases(host, iso)
        assert sorted(cases) == sorted([*CASE_NAMES, "frame_walking_forgery"])
        run = [name for name, case in cases.items() if case.skip is None]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(SECRET_NAME, secret)  # in the runner's environment too
            mp.setattr(tempfile, "mkdtemp", recording_mkdtemp)
            start = time.monotonic()
            results = run_tests_many(
                [(cases[n].program, cases[n].tests) for n in run], timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, workers=2
            )
            seconds = time.monotonic() - start
        yield Outcome(host, cases, dict(zip(run, results, strict=True)), seconds, made, listener)
    finally:
        bystander.kill()
        bystander.wait()
        listener.close()
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(home_dir, ignore_errors=True)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_program_is_contained(outcome: Outcome, name: str) -> None:
    case = outcome.cases[name]
    if case.skip:
        pytest.skip(case.skip)
    passed, verdict = outcome.verdicts[name]
    assert not passed and verdict in case.expected, (name, verdict)
    assert case.host_ok(), f"{name}: the host was harmed"


def test_known_limit_frame_walking_forgery(outcome: Outcome) -> None:
    """A program that walks up into the harness's frames finds the verdict line and writes "passed": the tests
    run in its own interpreter, so the sandbox cannot keep the verdict from a program written against it (see
    the module docstring of fusechat3.scoring.sandbox). If this starts passing, update the docs."""
    passed, verdict = outcome.verdicts["frame_walking_forgery"]
    if not passed:
        pytest.fail(f"the known limit no longer holds ({verdict}): the forgery failed; update the documentation")
    pytest.xfail("known limit: in-process forgery by a program that reads the harness's stack frames")


def test_the_batch_is_bounded_by_the_timeouts(outcome: Outcome) -> None:
    # 4 programs run into the 3 s timeout, two at a time; the rest take a fraction of a second each.
    assert outcome.seconds < 30, outcome.seconds
    for name in ("infinite_loop", "sleep", "stdout_flood"):
        assert outcome.verdicts[name] == (False, "timeout")


def test_host_is_intact_after_the_batch(outcome: Outcome) -> None:
    host = outcome.host
    assert host.bystander.poll() is None and sleepers(host.bystander_marker) == [host.bystander.pid]
    assert host.shared_canary.read_text() == "canary" and host.home_canary.read_text() == "canary"
    assert sorted(p.name for p in host.shared.iterdir()) == ["canary"]
    assert sorted(p.name for p in host.home_dir.iterdir()) == ["canary"]
    # Every work dir was removed (the loot file, the big file and stderr.txt with it).
    assert outcome.workdirs and not any(os.path.exists(d) for d in outcome.workdirs)
    # Nothing reached the listener.
    outcome.listener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        outcome.listener.accept()


def test_secret_scanner_finds_the_secret_outside_the_sandbox(outcome: Outcome, tmp_path: Path) -> None:
    """The control for steal_secret: the same scanner, run as a plain process of the runner, finds the secret in
    the bystander's environment (so an empty result in the sandbox means it could not see it)."""
    done = subprocess.run(
        [sys.executable, "-I", "-"],
        input=STEAL_SECRET + "import sys\nsys.stdout.write(repr(loot()))\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},  # not in its own environment: it must come from /proc
        timeout=30,
    )
    assert f"'{outcome.host.bystander.pid}/environ'" in done.stdout, done.stdout + done.stderr
