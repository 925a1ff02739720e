"""Tests for fusechat3.scoring.code: code extraction and the real subprocess sandbox."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from procs import gone_soon, sleepers

from fusechat3.scoring import sandbox
from fusechat3.scoring.code import FILE_SIZE_LIMIT, extract_code, pool_size, run_tests, run_tests_many, undefined_names

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


# ---------------------------------------------------------------------------------------------------------------
# extract_code


def test_extract_code_prefers_last_python_block() -> None:
    text = "First try:\n```python\ndef f():\n    return 1\n```\nBetter:\n```py\ndef f():\n    return 2\n```\nDone."
    assert extract_code(text) == "def f():\n    return 2\n"


def test_extract_code_python_block_over_untagged_and_other_languages() -> None:
    text = "```python\ndef f():\n    return 1\n```\nRun it with:\n```bash\npython f.py\n```\n```\nf()\n```"
    assert extract_code(text) == "def f():\n    return 1\n"


def test_extract_code_untagged_block_indented_fence_and_unclosed_fence() -> None:
    assert extract_code("Here:\n```\ndef g(x):\n    return x\n```") == "def g(x):\n    return x\n"
    assert (
        extract_code("1. Code:\n   ```python\n   def g(x):\n       return x\n   ```\n") == "def g(x):\n    return x\n"
    )
    assert extract_code("```python\ndef g(x):\n    return x\n") == "def g(x):\n    return x\n"


def test_extract_code_skips_a_later_block_that_only_uses_the_program() -> None:
    text = "```python\ndef f(x):\n    return x + 1\n```\nTests:\n```python\nassert f(1) == 2\nprint(f(2))\n```"
    assert extract_code(text) == "def f(x):\n    return x + 1\n"
    # A class counts as a definition; with no defining block, the last block is the program as before.
    assert extract_code("```python\nclass A:\n    pass\n```\n```python\nA()\n```") == "class A:\n    pass\n"
    assert extract_code("```python\nprint(1)\n```\n```python\nprint(2)\n```") == "print(2)\n"


def test_extract_code_whole_text_or_none() -> None:
    assert extract_code(ADD) == ADD
    assert extract_code("x = 1\nprint(x)\n") is None  # Python, but no function
    assert extract_code("The answer is to use a loop.") is None
    assert extract_code("```cpp\nint f() { return 1; }\n```") is None
    assert extract_code("") is None
    assert extract_code(None) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Verdicts


VERDICT_CASES = [
    (ADD, ADD_TESTS, (True, "passed")),
    ("def add(a, b):\n    return a - b\n", ADD_TESTS, (False, "test_failed")),
    ("def add(a, b)\n    return a + b\n", ADD_TESTS, (False, "syntax_error")),
    ("", ADD_TESTS, (False, "no_code")),
    (None, ADD_TESTS, (False, "no_code")),
    # Demo code under `if __name__ == "__main__":` does not run (it would wait for input here).
    (ADD + "if __name__ == '__main__':\n    input()\n", ADD_TESTS, (True, "passed")),
    ("input()\n" + ADD, ADD_TESTS, (False, "runtime_error")),
    (ADD, ["assert add(1, 2) ==="], (False, "bad_tests")),
    (ADD, ["return add(1, 2) == 3"], (False, "bad_tests")),  # parses, but does not compile
    ("return 1\n" + ADD, ADD_TESTS, (False, "syntax_error")),
    (ADD, [], (False, "bad_tests")),
    # Static analysis: an undefined name is found before running (see test_undefined_names).
    ("def add(a, b):\n    return undefined_name\n", ADD_TESTS, (False, "undefined_name")),
    # A NameError pyflakes cannot see (the name is deleted at run time) is the run's.
    ("def add(a, b):\n    return a + b\ndel globals()['add']\n", ADD_TESTS, (False, "runtime_error")),
    # An assert in the program itself is the program's error, not a failed test.
    ("assert False, 'module level'\n" + ADD, ADD_TESTS, (False, "runtime_error")),
    # Leaving early must not count as passing: the verdict comes from the harness, not the exit code.
    ("import sys\nsys.exit(0)\n" + ADD, ADD_TESTS, (False, "runtime_error")),
    ("import os\nos._exit(0)\n" + ADD, ADD_TESTS, (False, "runtime_error")),
    # A fake verdict line on the verdict pipe is ignored: it lacks the per-run token.
    (
        "import os, sys\nos.write(int(sys.argv[1]), b'0 passed\\npassed\\n')\n" + ADD,
        ["assert 0"],
        (False, "test_failed"),
    ),
]


@pytest.mark.parametrize(("code", "tests", "expected"), VERDICT_CASES)
def test_verdicts(code: str, tests: list[str], expected: tuple[bool, str]) -> None:
    assert run_tests(code, tests, timeout_s=10) == expected


# ---------------------------------------------------------------------------------------------------------------
# Static analysis


@pytest.mark.parametrize(
    ("code", "tests", "expected"),
    [
        # Builtins, module magic names and names a star import may bring are not reported.
        ("import os\ndef f():\n    return len(os.path.basename(__file__)) + len(__name__)\n", ["assert f()"], []),
        ("from math import *\ndef f():\n    return floor(2.5)\n", ["assert f() == 2"], []),
        ("try:\n    unicode\nexcept NameError:\n    unicode = str\n" + ADD, ADD_TESTS, []),
        # Names a test defines for a later test, and names defined after the function that uses them.
        ("def f():\n    return LIMIT\nLIMIT = 3\n", ["x = f()", "assert x == 3"], []),
        # Reported: in a function the tests never call too (the paper's "passes static analysis"),
        (ADD + "def helper():\n    return missing_helper()\n", ADD_TESTS, ["missing_helper"]),
        # a function the tests call that the program does not define,
        ("def plus(a, b):\n    return a + b\n", ADD_TESTS, ["add"]),
        # a name used at module level before it is bound, and an annotation naming an unimported type.
        ("print(y)\ny = 1\n" + ADD, ADD_TESTS, ["y"]),
        ("def add(a: int, b: int) -> Number:\n    return a + b\n", ADD_TESTS, ["Number"]),
    ],
)
def test_undefined_names(code: str, tests: list[str], expected: list[str]) -> None:
    assert undefined_names(code, tests) == expected


def test_undefined_name_is_found_without_running() -> None:
    # The program would spin until the timeout if it ran.
    start = time.monotonic()
    assert run_tests("while True:\n    pass\n" + ADD.replace("a + b", "a + c"), ADD_TESTS, timeout_s=5.0) == (
        False,
        "undefined_name",
    )
    assert time.monotonic() - start < 1
    # A star import is not flagged, and the program runs and passes.
    star = "from operator import *\ndef plus(a, b):\n    return add(a, b)\n"
    assert run_tests(star, ["assert plus(1, 2) == 3"]) == (True, "passed")


def test_program_and_tests_share_a_real_module() -> None:
    code = "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n"
    tests = ["assert P(1) == P(1)", "import sys\nassert sys.modules['solution'].P is P"]
    assert run_tests(code, tests) == (True, "passed")


def test_memory_bomb() -> None:
    assert run_tests("x = bytearray(8 * 1024**3)\n", ["assert True"], memory_mb=256) == (False, "memory_error")
    slow_bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n"
    assert run_tests(slow_bomb, ["assert True"], memory_mb=256) == (False, "memory_error")


def test_huge_file_is_cut_at_the_limit_and_the_work_dir_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    writer = textwrap.dedent(
        """
        import errno, os
        def write_big():
            try:
                with open("big", "wb") as f:
                    while True:
                        f.write(b"x" * 2**20)
            except OSError as e:
                return e.errno, os.path.getsize("big")
        """
    )
    start = time.monotonic()
    assert run_tests(writer, [f"assert write_big() == (errno.EFBIG, {FILE_SIZE_LIMIT})"]) == (True, "passed")
    assert run_tests(writer.replace("except OSError", "except ZeroDivisionError"), ["write_big()"]) == (
        False,
        "runtime_error",
    )
    assert time.monotonic() - start < 8  # stopped by the limit, not by the 10 s timeout
    assert len(made) == 2 and not any(os.path.exists(path) for path in made)


def test_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_for_the_test")
    check = "import os\nassert 'HF_TOKEN' not in os.environ and os.environ['PATH']"
    assert run_tests(ADD, [check]) == (True, "passed")
    # The opposite assertion fails, so the check above can fail.
    assert run_tests(ADD, ["import os\nassert 'HF_TOKEN' in os.environ"]) == (False, "test_failed")


# ---------------------------------------------------------------------------------------------------------------
# Timeouts and leftover processes


def _marker() -> str:
    return f"{random.randint(10_000, 99_999)}.{random.randint(100_000, 999_999)}"


def _forking_program(marker: str, after_fork: str, setsid: bool = False) -> str:
    """A program that forks a child which becomes `sleep <marker>` (after leaving the group if setsid)."""
    child = ["os.setsid()"] if setsid else []
    child.append(f'os.execvp("sleep", ["sleep", "{marker}"])')
    body = "\n".join("    " + line for line in child)
    return f"import os\nif os.fork() == 0:\n{body}\n{after_fork}\n"


@pytest.fixture(scope="module")
def sleep_detector_works() -> None:
    """The detector finds a real sleeper: so an empty result below means the sandbox killed it."""
    marker = _marker()
    proc = subprocess.Popen(["sleep", marker])
    try:
        deadline = time.monotonic() + 5
        while not sleepers(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleepers(marker) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()


def test_infinite_loop_is_killed_with_its_children(sleep_detector_works: None) -> None:
    marker = _marker()
    program = _forking_program(marker, "while True:\n    pass")
    start = time.monotonic()
    assert run_tests(program, ["assert True"], timeout_s=1.0) == (False, "timeout")
    assert time.monotonic() - start < 4
    assert gone_soon(marker)


def test_children_do_not_outlive_a_passing_program(sleep_detector_works: None) -> None:
    marker = _marker()
    assert run_tests(_forking_program(marker, ADD), ADD_TESTS, timeout_s=5.0) == (True, "passed")
    assert gone_soon(marker)


def test_children_that_leave_the_process_group_die_too(sleep_detector_works: None) -> None:
    if "--pid" not in sandbox._isolation().prefix:
        pytest.skip(f"no PID namespace on this machine ({sandbox.describe_isolation()})")
    marker = _marker()
    assert run_tests(_forking_program(marker, ADD, setsid=True), ADD_TESTS, timeout_s=5.0) == (True, "passed")
    assert gone_soon(marker)


def test_resource_limits_are_set_in_the_child() -> None:
    check = textwrap.dedent(
        f"""
        import resource as r
        assert r.getrlimit(r.RLIMIT_AS) == (256 * 2**20, 256 * 2**20)
        assert r.getrlimit(r.RLIMIT_CPU) == (3, 4)
        assert r.getrlimit(r.RLIMIT_FSIZE) == ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})
        assert r.getrlimit(r.RLIMIT_NOFILE)[1] <= 128
        assert r.getrlimit(r.RLIMIT_CORE) == (0, 0)
        """
    )
    assert run_tests(ADD, [check], timeout_s=2.0, memory_mb=256) == (True, "passed")
    # The program cannot raise a hard limit back.
    assert run_tests(ADD, ["import resource as r\nr.setrlimit(r.RLIMIT_AS, (-1, -1))"]) == (False, "runtime_error")


def test_cpu_seconds_limit_counts_as_timeout() -> None:
    # The program lowers its own CPU limit (allowed) and spins: the kernel's SIGXCPU, not the 10 s wall clock,
    # ends it, and the supervisor reports it.
    spin = "import resource as r\nr.setrlimit(r.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass\n"
    start = time.monotonic()
    assert run_tests(spin, ["assert True"], timeout_s=10.0) == (False, "timeout")
    assert time.monotonic() - start < 6


# ---------------------------------------------------------------------------------------------------------------
# Network


def test_no_network() -> None:
    if not sandbox.network_isolated():
        pytest.skip(f"no network namespace on this machine ({sandbox.describe_isolation()})")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the listener is reachable from outside the sandbox
        server.accept()[0].close()
        program = textwrap.dedent(
            f"""
            import socket
            def reachable():
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                    return True
                except OSError:
                    return False
            """
        )
        assert run_tests(program, ["assert reachable() is False"]) == (True, "passed")
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()  # nothing came in


# ---------------------------------------------------------------------------------------------------------------
# Namespaces, seen from inside


def test_namespaces_seen_from_inside() -> None:
    iso = sandbox._isolation()
    if not iso.private_dirs:
        pytest.skip(f"no mount namespace on this machine ({sandbox.describe_isolation()})")
    check = textwrap.dedent(
        """
        import os
        status = open("/proc/self/status").read()
        assert "CapEff:\\t0000000000000000" in status, status  # root in the namespace, without capabilities
        assert "NoNewPrivs:\\t1" in status, status
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        assert len(pids) == 2, pids  # the supervisor and the worker: not the host's processes
        assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")  # a fresh tmpfs
        assert os.path.samefile(os.getcwd(), os.path.dirname(__file__))  # the work dir, bound back
        """
    )
    assert run_tests(ADD, [check]) == (True, "passed")
    # The same check fails where it should: the capability line is checked for real.
    assert run_tests(ADD, [check.replace("CapEff:\\t0000000000000000", "CapEff:\\t0000000000000001")]) == (
        False,
        "test_failed",
    )


# ---------------------------------------------------------------------------------------------------------------
# Running as root: the programs get an unprivileged uid


def test_root_uses_a_system_interpreter_for_the_unprivileged_uid() -> None:
    system = sandbox._interpreters(sandbox.NOBODY)[1:]
    if os.geteuid() != 0 or not system:
        pytest.skip("needs root and a system interpreter of this Python version")
    iso = sandbox._isolation()
    assert iso.user == sandbox.NOBODY and iso.nproc, sandbox.describe_isolation()
    # The programs run under the same Python version as this process.
    version = f"import sys\nassert sys.version_info[:2] == {tuple(sys.version_info[:2])!r}\n"
    assert run_tests(ADD, [version]) == (True, "passed")


def test_root_drops_to_an_unprivileged_user(monkeypatch: pytest.MonkeyPatch) -> None:
    interpreter = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or interpreter is None:
        pytest.skip("needs root and a system python3 that uid 65534 can run")
    monkeypatch.setattr(sys, "executable", interpreter)
    sandbox._isolation.cache_clear()
    # Not under /tmp, which the sandbox may replace with its own: root's home directory.
    folder = Path(tempfile.mkdtemp(prefix=".fusechat3-test-", dir=Path.home()))
    try:
        assert sandbox._isolation().user == sandbox.NOBODY, sandbox.describe_isolation()
        secret = folder / "root-only.txt"
        secret.write_text("root only")
        secret.chmod(0o600)
        reader = f"def read():\n    return open({str(secret)!r}).read()\n"
        assert run_tests(reader, ["read()"]) == (False, "runtime_error")
        assert run_tests(reader, ["try:\n    read()\nexcept PermissionError:\n    pass"]) == (True, "passed")
    finally:
        shutil.rmtree(folder)
        sandbox._isolation.cache_clear()


# ---------------------------------------------------------------------------------------------------------------
# Many


def test_pool_size_is_bounded() -> None:
    cores = len(os.sched_getaffinity(0))
    assert pool_size(0, 1000, 1) == cores  # one per usable core by default
    assert pool_size(8, 3, 1) == 3  # never more than the jobs
    assert pool_size(8, 0, 1) == 1
    assert pool_size(64, 1000, 1024**3) == 1  # an exabyte each: one at a time
    assert pool_size(5, 1000, 1) == 5  # an explicit size is honoured


def test_run_tests_many_keeps_order() -> None:
    jobs = [
        (ADD, ADD_TESTS),
        ("while True:\n    pass\n", ["assert True"]),
        ("def add(a, b):\n    return 0\n", ADD_TESTS),
        ("def add(", ADD_TESTS),
        (ADD, ADD_TESTS),
        ("raise ValueError('boom')\n" + ADD, ADD_TESTS),
    ]
    expected = [
        (True, "passed"),
        (False, "timeout"),
        (False, "test_failed"),
        (False, "syntax_error"),
        (True, "passed"),
        (False, "runtime_error"),
    ]
    assert run_tests_many(jobs, timeout_s=1.5, workers=2) == expected
    assert run_tests_many([], timeout_s=1.0) == []


def test_a_batch_gives_each_program_the_verdict_it_gets_alone() -> None:
    # Every verdict case of test_verdicts, plus a timeout and a memory error, in one sandbox, one after the other.
    cases = [
        *VERDICT_CASES,
        ("import time\ntime.sleep(60)\n" + ADD, ADD_TESTS, (False, "timeout")),
        ("x = bytearray(8 * 1024**3)\n", ["assert True"], (False, "memory_error")),
        (ADD, ADD_TESTS, (True, "passed")),
    ]
    jobs = [(code, tests) for code, tests, _ in cases]
    start = time.monotonic()
    got = run_tests_many(jobs, timeout_s=2.0, memory_mb=256, workers=1, batch_size=len(jobs))
    assert got == [expected for _, _, expected in cases]
    assert time.monotonic() - start < 15  # one program's clock ran out, not the batch's


def test_a_program_leaves_nothing_to_the_next_one_in_its_batch(sleep_detector_works: None) -> None:
    marker = _marker()
    litter = textwrap.dedent(
        """
        import os, tempfile
        for path in ("left.txt", "../left.txt", os.path.join(tempfile.gettempdir(), "left.txt"), "/dev/shm/left.txt"):
            try:
                with open(path, "w") as f:
                    f.write("x")
            except OSError:
                pass
        os.environ["LEFT"] = "1"
        import sys
        sys.modules["json"].LEFT = 1
        """
    )
    check = textwrap.dedent(
        """
        import os, tempfile, json
        assert os.listdir(".") == ["solution.py"], os.listdir(".")
        assert not os.path.exists("../left.txt")
        assert not os.path.exists(os.path.join(tempfile.gettempdir(), "left.txt"))
        assert "LEFT" not in os.environ and not hasattr(json, "LEFT")
        """
    )
    jobs = [(_forking_program(marker, litter + ADD), ADD_TESTS), (ADD, [check])]
    if "--mount-proc" in sandbox._isolation().prefix:  # a private /tmp and /dev/shm: nothing left there either
        jobs[1] = (ADD, [check + 'assert not os.path.exists("/dev/shm/left.txt")\n'])
    assert run_tests_many(jobs, timeout_s=5.0, workers=1, batch_size=2) == [(True, "passed")] * 2
    assert gone_soon(marker)


def test_a_program_started_before_the_next_one_is_dead_by_then(sleep_detector_works: None) -> None:
    if "--pid" not in sandbox._isolation().prefix:
        pytest.skip(f"no PID namespace on this machine ({sandbox.describe_isolation()})")
    marker = _marker()
    # The sleeper leaves the process group, and the program waits until it has; the next program of the batch
    # looks for any process of the namespace but its own and the supervisor.
    escape = textwrap.dedent(
        f"""
        import os, time
        child = os.fork()
        if child == 0:
            os.setsid()
            os.execvp("sleep", ["sleep", "{marker}"])
        while os.getpgid(child) == os.getpgid(0):
            time.sleep(0.01)
        time.sleep(0.2)
        """
    )
    alone = "import os\nassert sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, os.getpid()]"
    jobs = [(escape + ADD, ADD_TESTS), (ADD, [alone])]
    if "--mount-proc" not in sandbox._isolation().prefix:
        jobs[1] = (ADD, ADD_TESTS)  # the host's /proc: nothing to look at from inside
    assert run_tests_many(jobs, timeout_s=5.0, workers=1, batch_size=2) == [(True, "passed")] * 2
    assert gone_soon(marker)


def test_a_batch_whose_supervisor_is_killed_runs_its_other_programs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a PID namespace a program can kill the supervisor (inside one, as its init, the supervisor ignores
    # the signal). The programs after it get no verdict from the batch and are run again one by one.
    iso = sandbox._isolation()
    plain = sandbox._Isolation(prefix=(), user=iso.user, nproc=iso.nproc, python=iso.python)
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + ADD
    jobs = [(ADD, ADD_TESTS), (killer, ADD_TESTS), (ADD, ADD_TESTS), ("def add(a, b):\n    return 0\n", ADD_TESTS)]
    verdicts, timed_out = sandbox._sandboxed_batch(jobs, plain, 5.0, 1024)
    assert verdicts[0] == "passed" and verdicts[2:] == [None, None] and not timed_out
    monkeypatch.setattr(sandbox, "_isolation", lambda: plain)
    got = run_tests_many(jobs, timeout_s=5.0, workers=1, batch_size=4)
    assert [got[0], got[2], got[3]] == [(True, "passed"), (True, "passed"), (False, "test_failed")]
    # Alone it kills its own supervisor again: its worker, told to die with the supervisor, may still finish the
    # tests first (as it could before batches). Either way no other program's verdict depends on it.
    assert got[1] in {(True, "passed"), (False, "runtime_error")}
