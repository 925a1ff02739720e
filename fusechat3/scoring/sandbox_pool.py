"""Many programs through the sandbox (`fusechat3.scoring.sandbox`): `run_tests_many` groups them in batches, one
sandbox per batch (`sandbox.run_batch`), and runs the batches in a bounded pool of threads here or, on a Ray cluster, as
CPU tasks spread over its nodes (`fusechat3.ray_exec.cpu_tasks`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fusechat3.scoring.code_extract import static_verdict
from fusechat3.scoring.sandbox import BATCH_SIZE, _isolation, run_batch


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
    batch_size: int = BATCH_SIZE,
    fan_out: Callable[[Callable, list[tuple]], list] | None = None,
) -> list[tuple[bool, str]]:
    """`run_tests` over (code, tests) jobs; results in job order, the same as `run_tests` gives one by one.

    The programs that pass the static check run in batches of `batch_size` per sandbox (`run_batch`: one after the
    other, each in a fresh worker, `sandbox_child`): starting a sandbox (the namespaces, the interpreter) costs more
    than most programs take to run. The batches run in a bounded pool of threads here (`pool_size`; threads suffice:
    each waits on its own sandbox process), or, with `fan_out` (`fusechat3.ray_exec.cpu_tasks`), wherever it sends
    them: `fan_out(run_batch, [args, ...])` gives each batch's results in order."""
    jobs = list(jobs)
    out: list[tuple[bool, str] | None] = [None] * len(jobs)
    todo = []
    for i, (code, tests) in enumerate(jobs):
        problem = static_verdict(code, tests)
        if problem:
            out[i] = (False, problem)
        else:
            todo.append(i)
    if todo:
        size = pool_size(workers, len(todo), memory_mb)
        # Batches no bigger than an equal share of the pool, so that a few jobs still use every sandbox at once (a
        # cluster's CPUs: full batches).
        step = batch_size if fan_out is not None else max(1, min(batch_size, -(-len(todo) // size)))
        batches = [todo[k : k + step] for k in range(0, len(todo), step)]
        args = [([jobs[i] for i in batch], timeout_s, memory_mb) for batch in batches]
        if fan_out is None:
            _isolation()  # probe once, before the threads race to do it
            with ThreadPoolExecutor(max_workers=size) as pool:
                results = list(pool.map(lambda a: run_batch(*a), args))
        else:
            results = fan_out(run_batch, args)
        for batch, verdicts in zip(batches, results, strict=True):
            for i, verdict in zip(batch, verdicts, strict=True):
                out[i] = tuple(verdict)
    return [r for r in out if r is not None]
