"""The child side of the code sandbox (`fusechat3.scoring.sandbox`): runs one program and its assert tests.

This file is never imported. The parent reads its source and runs it as `python -I -c <source> <fd> <config>` in
the sandboxed subprocess, inside the isolation the parent set up (namespaces, uid, work dir, minimal environment).
It may therefore use the standard library only: the interpreter may be a system one run by another uid, with no
access to fusechat3 or its dependencies.

Arguments: the pipe's write end reserved for the verdict, and a JSON config (`limits`: (soft, hard) by resource
name; `private_dirs` and `private_size`: the tmpfs mounts; `drop_capabilities`). The per-run verdict token comes
on stdin, so that it never appears in the command line (/proc/<pid>/cmdline).

The work dir holds `solution.py` (the program) and `tests.json` (the test snippets). A supervisor (this process)
forks a worker that sets the limits, runs the program as module `solution` and the tests in its namespace, and
writes one line "<token> <verdict>" to the pipe; if the worker dies instead, the supervisor writes how.
"""

import json
import os
import resource
import signal
import sys
import types

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
            options = f"mode=1777,size={size}".encode()
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


def run_program(
    limits,
    exec=exec,
    compile=compile,
    open=open,
    AssertionError=AssertionError,
    MemoryError=MemoryError,
    BaseException=BaseException,
):
    # The worker: limits first, then the program and its tests in one real module. The builtins it needs are
    # bound as defaults, before the program runs: a program that patches `builtins` cannot switch the tests off.
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    with open("tests.json", encoding="utf-8") as f:
        tests = json.load(f)
    # Compiled up front: after the program has run, nothing here looks up a builtin it could have replaced.
    checks = [compile(test, f"<test {i}>", "exec") for i, test in enumerate(tests)]
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


if __name__ == "__main__":  # `python -c` runs it as __main__; an import (a linter, a test) runs nothing
    main()
