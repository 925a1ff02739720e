"""The child side of the code sandbox (`fusechat3.scoring.sandbox`): runs programs and their assert tests.

This file is never imported. The parent reads its source and runs it as `python -I -c <source> <fd> <config>` in
the sandboxed subprocess, inside the isolation the parent set up (namespaces, uid, work dir, minimal environment).
It may therefore use the standard library only: the interpreter may be a system one run by another uid, with no
access to fusechat3 or its dependencies.

Arguments: the pipe's write end reserved for the verdicts, and a JSON config (`limits`: (soft, hard) by resource
name; `timeout_s`: the wall clock per program; `private_dirs` and `private_size`: the tmpfs mounts;
`drop_capabilities`). Stdin carries the per-run verdict token (first line, so that it never appears in the command
line, /proc/<pid>/cmdline) and then the jobs, a JSON list of [program, tests].

This process is the supervisor; it never runs a program itself. For each job in turn it writes the program to
`job-<i>/solution.py`, forks a worker (its own process group) that sets the limits, runs the program as module
`solution` and the tests in its namespace, and writes one line "<token> <i> <verdict>" to the pipe. If the worker
dies instead, or outlives the wall clock, the supervisor writes how. Then, before the next job, it kills whatever
the program left running (every other process of the PID namespace when the supervisor is its init, else the
worker's process group) and empties the work dir and the private tmpfs directories, so each program starts from
the same state: forked from a supervisor that has run no program, in an empty directory.
"""

import json
import os
import resource
import select
import shutil
import signal
import sys
import time
import types

MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
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
    source,
    tests,
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


def wait_for(pid, timeout_s):
    # (status, usage) of the worker, or None when the wall clock ran out first (the worker still runs).
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # an old kernel: poll
        deadline = time.monotonic() + timeout_s
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, usage
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    if not ready:
        return None
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def clean_up(worker, private, workdir):
    # Nothing the program started may run on into the next job, or leave files for it.
    if os.getpid() == 1:  # init of the sandbox's PID namespace: kill(-1) reaches every other process in it
        while True:  # kill, reap one, again: a process forked meanwhile is killed by the next round
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    else:  # no PID namespace: the worker's process group (a program that left it is not reached)
        try:
            os.killpg(worker, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.waitpid(worker, 0)
        except ChildProcessError:
            pass
    for d in [*private, workdir]:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(d, name)
            if path == workdir or workdir.startswith(path + os.sep):
                continue  # the work dir, bound back inside a private directory
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def main():
    # Locals of a function, not module globals: the program cannot just read the token from __main__.
    fd, config = int(sys.argv[1]), json.loads(sys.argv[2])
    token = sys.stdin.readline().strip()
    jobs = json.loads(sys.stdin.read())
    if config["private_dirs"]:
        private_dirs(config["private_dirs"], config["private_size"])
    workdir = os.getcwd()
    private = [os.path.realpath(d) for d in config["private_dirs"]]
    # Bound before any program runs: it may patch the os module, not these locals.
    write, getpid, leave, fork, setpgid, chdir = os.write, os.getpid, os._exit, os.fork, os.setpgid, os.chdir
    die_with_me = None
    if getpid() != 1:
        # Without a PID namespace a worker in its own process group would outlive a supervisor killed by the
        # parent's clock: each worker asks the kernel for SIGKILL when the supervisor dies.
        ctypes, lib, _ = libc()
        die_with_me = (lib.prctl, PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))
    verdicts = ("passed", "test_failed", "runtime_error", "memory_error", "timeout")
    for i, (source, tests) in enumerate(jobs):
        # Built before the program runs, so that reporting needs no allocation after a MemoryError.
        lines = {v: f"{token} {i} {v}\n".encode() for v in verdicts}
        home = os.path.join(workdir, f"job-{i}")
        os.mkdir(home)
        with open(os.path.join(home, "solution.py"), "w", encoding="utf-8") as f:
            f.write(source)
        pid = fork()
        if pid == 0:
            worker = getpid()
            setpgid(0, 0)
            if die_with_me is not None:
                die_with_me[0](die_with_me[1], die_with_me[2], 0, 0, 0)
            chdir(home)
            if config["drop_capabilities"]:
                drop_capabilities()
            verdict = run_program(config["limits"], source, tests)
            if getpid() == worker:  # not from a child the program forked and that ran on into the tests
                write(fd, lines[verdict])
            leave(0)  # skip atexit handlers and non-daemon threads of the program: the verdict is in
        ended = wait_for(pid, config["timeout_s"])
        if ended is None:
            write(fd, lines["timeout"])
        else:
            status, usage = ended
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                write(fd, lines[death_verdict(status, usage, config["limits"])])
        clean_up(pid, private, workdir)
    leave(0)


if __name__ == "__main__":  # `python -c` runs it as __main__; an import (a linter, a test) runs nothing
    main()
