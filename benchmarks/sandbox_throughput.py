"""Programs per second of the code sandbox's bounded pool (`run_tests_many`) on the toy world's code tasks.

The toy code tasks come with their reference solution and three assert tests each. The batch mixes the
correct solutions with wrong ones, as model responses are: a wrong answer (runs, fails a test), a crash at run
time, and an undefined name (caught by static analysis, never run). The same programs run with 1 worker, 2 workers
and one per usable core, each with one program per sandbox (`--batch 1`, how the sandbox worked before batches)
and with `run_tests_many`'s default of 16 programs per sandbox, in one run; every setting must give the same
verdicts.

    python benchmarks/sandbox_throughput.py                    # 200 programs, 25 % wrong
    python benchmarks/sandbox_throughput.py --programs 1000 --workers 1,2,4,8 --batch 1,4,16,64

Prints the machine's isolation, then programs/s per setting and the ratio to the first, and last
`ratio <x>`: the default batch over one program per sandbox, at the default pool size (one per core).
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
    ap.add_argument("--batch", default="", help="comma-separated programs per sandbox (default: 1 and the default)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
    args = ap.parse_args()

    from fusechat3.scoring.code import describe_isolation, extract_code, run_tests_many
    from fusechat3.scoring.sandbox import BATCH_SIZE
    from fusechat3.scoring.sandbox_pool import _cpu_count
    from fusechat3.toyworld import tasks as T

    tasks = T.split_tasks("code", args.programs, "fusion")
    jobs, n_wrong = [], round(args.programs * args.wrong)
    for i, task in enumerate(tasks):
        code = extract_code(task.response)
        assert code is not None
        jobs.append((_wrong(code, i % 3) if i < n_wrong else code, list(task.tests)))
    cores = _cpu_count()
    sizes = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, 2, cores})
    batches = [int(b) for b in args.batch.split(",")] if args.batch else [1, BATCH_SIZE]

    print(f"machine: {platform.node()}, {platform.machine()}, {cores} usable cores, {os.cpu_count()} CPUs")
    print(f"isolation: {describe_isolation()}")  # probes once, outside the timed runs
    print(f"batch: {len(jobs)} programs ({n_wrong} wrong), toy code tasks, timeout {args.timeout} s\n")

    rates, reference = {}, None
    for batch in batches:
        for size in sizes:
            start = time.perf_counter()
            results = run_tests_many(jobs, timeout_s=args.timeout, workers=size, batch_size=batch)
            seconds = time.perf_counter() - start
            verdicts = [v for _, v in results]
            if reference is None:
                reference = verdicts
                print("verdicts:", dict(sorted(Counter(verdicts).items())), "\n")
            assert verdicts == reference, f"batch={batch} workers={size}: verdicts differ from the first setting"
            rates[batch, size] = len(jobs) / seconds
            first = rates[batches[0], sizes[0]]
            print(
                f"batch={batch:<3d} workers={size:<3d} {seconds:7.2f} s  {rates[batch, size]:7.1f} programs/s  "
                f"{rates[batch, size] / first:5.2f}x vs batch={batches[0]} workers={sizes[0]}"
            )
    if (1, cores) in rates and (BATCH_SIZE, cores) in rates:
        print(
            f"\nratio {rates[BATCH_SIZE, cores] / rates[1, cores]:.2f}  (batch={BATCH_SIZE} over batch=1, workers={cores})"
        )


if __name__ == "__main__":
    main()
