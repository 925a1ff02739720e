"""The sample stage on Ray: throughput on 1 and 2 Ray workers, and the Ray path's overhead against the local path.

One source (the toy `mistral-math`, CPU vLLM), the same prompts and sampling each time, a fresh run directory per
configuration, the stage timed from start to end (engine start included, as a user waits for it):

- local: `fusechat3 sample` in this process (vLLM's CPU build binds its threads to every core), after a warm-up
  run that pays vLLM's first import;
- ray-1: one Ray actor with every CPU (`sampler.ray: {replicas: 1, cpus_per_replica: <cores>}`): the overhead;
- ray-1x1 and ray-2x1: one and two actors with one CPU (thread) each: the scaling.

Each configuration samples `--prompts` prompts in shards of `--shard-size`. Its steady throughput is read from the
times the shards were written (their files' modification times): the prompts of every shard after the first over
the time from the first shard written to the last, so it counts everything between shards (Ray's scheduling, the
results' transfer, the driver's writes) and not the start (Ray, the actors and their engines), which is reported
apart as the time to the first shard. (Two end-to-end runs of different sizes would give the same figure, but the
start's noise, several seconds, swamps it on a toy model.) The rows of every Ray run are checked against the local
path's. Prints both figures per configuration and `ratio <x>` lines (steady throughputs): 2 workers over 1, and the
local path over Ray on one worker (the overhead is 1 - 1/ratio).

    python benchmarks/ray_scaling.py [--prompts 3000] [--shard-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=3000)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()

    import ray

    from fusechat3.recipe import load_recipe
    from fusechat3.run import Run
    from fusechat3.sampling.stage import run_sample
    from fusechat3.stages import get as stage_fn

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    configs = {
        "local": [],
        "ray-1": [f"sampler.ray={{replicas: 1, cpus_per_replica: {cores}}}"],
        "ray-1x1": ["sampler.ray={replicas: 1, cpus_per_replica: 1}"],
        "ray-2x1": ["sampler.ray={replicas: 2, cpus_per_replica: 1}"],
    }

    def timed(name: str, extra: list[str], n: int) -> tuple[float, float, float, float, list[dict]]:
        """(seconds to the first shard, steady prompts/s, seconds in all, the workers' busy share, rows)."""
        per = n // 3
        base = [
            f"run_dir={tmp / f'{name}-{n}'}",
            f"prompts=[{{builder: toyworld, args: {{split: fusion, per_domain: {{math: {per}, code: {per}, "
            f"instruction: {n - 2 * per}, zh: 0}}}}}}]",
            f"sources=[{{name: m, model: 'toyworld:mistral-math', sampling: {{n: 2, max_tokens: {args.max_tokens}}}}}]",
            "building.zh_source=m",
            "wrpo=null",
            f"sampler.shard_size={args.shard_size}",
        ]
        run = Run(load_recipe(ROOT / "recipes/toyworld/imf.yaml", [*base, *extra]))
        stage_fn("prompts").run(run)
        t0 = time.time()
        run_sample(run)
        total = time.time() - t0
        folder = Path(run.dir.root) / "sample" / "m"
        written = sorted((f.stat().st_mtime, f.name.removesuffix(".parquet")) for f in folder.glob("shard-*.parquet"))
        records = json.loads((folder / "manifest.json").read_text())["shards"]
        span = written[-1][0] - written[0][0]
        steady = (n - records[written[0][1]]["prompts"]) / span if span > 0 else float("nan")  # one shard: none
        # The share of that time the workers spent in the shards' sampling (`seconds` of each shard's record,
        # timed inside the worker): 1.0 means nothing between the shards costs time.
        replicas = 2 if name == "ray-2x1" else 1
        busy = sum(records[k]["seconds"] for _, k in written[1:]) / (span * replicas) if span > 0 else float("nan")
        return written[0][0] - t0, steady, total, busy, run.read("sample/m")

    steady, start, busy, rows = {}, {}, {}, {}
    timed("warmup", [], 30)  # vLLM's first import in this process is not the local path's cost
    for name, extra in configs.items():
        start[name], steady[name], total, busy[name], rows[name] = timed(name, extra, args.prompts)
        print(
            f"{name}: {args.prompts} prompts in {total:.1f} s: first shard after {start[name]:.1f} s, then "
            f"{steady[name]:.1f} prompts/s, workers busy {busy[name]:.0%} of the time",
            flush=True,
        )
    for name in configs:
        assert rows[name] == rows["local"], f"{name}: rows differ from the local path's"
    print(
        json.dumps(
            {
                "steady_prompts_per_s": {k: round(v, 2) for k, v in steady.items()},
                "first_shard_s": {k: round(v, 1) for k, v in start.items()},
                "workers_busy": {k: round(v, 3) for k, v in busy.items()},
            }
        )
    )
    print(f"ratio {steady['ray-2x1'] / steady['ray-1x1']:.2f}  (2 Ray workers over 1, one CPU each)")
    print(f"ratio {steady['local'] / steady['ray-1']:.2f}  (local path over Ray on one worker with every CPU)")


if __name__ == "__main__":
    main()
