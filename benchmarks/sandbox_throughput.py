"""Programs per second of the code sandbox's bounded pool (`run_tests_many`) on the toy world's code tasks.

The toy code tasks come with their reference solution and three assert tests each. The batch mixes the
correct solutions with wrong ones, as model responses are: a wrong answer (runs, fails a test), a crash at run
time, and an undefined name (caught by static analysis, never run). The same batch runs with 1 worker, 2 workers
and one per usable core, in one run; every setting must give the same verdicts.

    python benchmarks/sandbox_throughput.py                    # 200 programs, 25 % wrong
    python benchmarks/sandbox_throughput.py --programs 1000 --workers 1,2,4,8

Prints the machine's isolation, then programs/s per setting and the ratio to 1 worker.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import Counter


def _wrong(code: str, kind: int) -> str:
    """A wrong variant of a correct toy solution (`def name(arg):\\n    return ...`)."""
    head = code.split("\n", 1)[0]
    body = ("return None", "raise ValueError('no')", "return helper(1)")[kind]  # test_failed, runtime_error,
    return f"{head}\n    {body}\n"  # undefined_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", type=int, default=200, help="programs per setting")
    ap.add_argument("--wrong", type=float, default=0.25, help="fraction of wrong programs")
    ap.add_argument("--workers", default="", help="comma-separated pool sizes (default: 1, 2 and one per core)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
    args = ap.parse_args()

    from fusechat3.scoring.code import describe_isolation, extract_code, run_tests_many
    from fusechat3.scoring.sandbox import _cpu_count
    from fusechat3.toyworld import tasks as T

    tasks = T.split_tasks("code", args.programs, "fusion")
    jobs, n_wrong = [], round(args.programs * args.wrong)
    for i, task in enumerate(tasks):
        code = extract_code(task.response)
        assert code is not None
        jobs.append((_wrong(code, i % 3) if i < n_wrong else code, list(task.tests)))
    cores = _cpu_count()
    sizes = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, 2, cores})

    print(f"machine: {platform.node()}, {platform.machine()}, {cores} usable cores, {os.cpu_count()} CPUs")
    print(f"isolation: {describe_isolation()}")  # probes once, outside the timed runs
    print(f"batch: {len(jobs)} programs ({n_wrong} wrong), toy code tasks, timeout {args.timeout} s\n")

    rates, reference = {}, None
    for size in sizes:
        start = time.perf_counter()
        results = run_tests_many(jobs, timeout_s=args.timeout, workers=size)
        seconds = time.perf_counter() - start
        verdicts = [v for _, v in results]
        if reference is None:
            reference = verdicts
            print("verdicts:", dict(sorted(Counter(verdicts).items())), "\n")
        assert verdicts == reference, f"workers={size}: verdicts differ from workers={sizes[0]}"
        rates[size] = len(jobs) / seconds
        print(
            f"workers={size:<3d} {seconds:7.2f} s  {rates[size]:7.1f} programs/s  "
            f"{rates[size] / rates[sizes[0]]:5.2f}x vs workers={sizes[0]}"
        )


if __name__ == "__main__":
    main()
