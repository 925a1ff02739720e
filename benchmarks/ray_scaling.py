"""The sample stage on Ray: throughput on 1 and 2 Ray workers, and the Ray path's overhead against the local path.

One source (the toy `mistral-math`, CPU vLLM), the same prompts and sampling each time, a fresh run directory per
configuration, the stage timed from start to end (engine start included, as a user waits for it):

- local: `fusechat3 sample` in this process (vLLM's CPU build binds its threads to every core), after a warm-up
  run that pays vLLM's first import;
- ray-1: one Ray actor with every CPU (`sampler.ray: {replicas: 1, cpus_per_replica: <cores>}`): the overhead;
- ray-1x1 and ray-2x1: one and two actors with one CPU (thread) each: the scaling.

Each configuration runs at two sizes (`--sizes`): the end-to-end time of the small and the large one give the
marginal throughput, (n2 - n1) / (t2 - t1), and the fixed cost (starting Ray, the actors and their engines),
t1 - n1 / marginal. On a toy model the fixed cost dominates any small run; on a real one the sampling does. The rows
of every Ray run are checked against the local path's. Prints both figures per configuration and `ratio <x>` lines
(marginal throughputs): 2 workers over 1, and the local path over Ray on one worker (the overhead is 1 - 1/ratio).

    python benchmarks/ray_scaling.py [--sizes 600 3000] [--shard-size 100]
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
    ap.add_argument("--sizes", type=int, nargs=2, default=[600, 3000])
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

    def timed(name: str, extra: list[str], n: int) -> tuple[float, list[dict]]:
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
        t0 = time.perf_counter()
        run_sample(run)
        return time.perf_counter() - t0, run.read("sample/m")

    marginal, fixed, rows = {}, {}, {}
    n1, n2 = args.sizes
    timed("warmup", [], 30)  # vLLM's first import in this process is not the local path's cost
    for name, extra in configs.items():
        t1, _ = timed(name, extra, n1)
        t2, rows[name] = timed(name, extra, n2)
        marginal[name] = (n2 - n1) / (t2 - t1)
        fixed[name] = t1 - n1 / marginal[name]
        print(
            f"{name}: {n1} prompts in {t1:.1f} s, {n2} in {t2:.1f} s: {marginal[name]:.1f} prompts/s marginal, "
            f"{fixed[name]:.1f} s fixed",
            flush=True,
        )
    for name in configs:
        assert rows[name] == rows["local"], f"{name}: rows differ from the local path's"
    print(
        json.dumps(
            {
                "marginal_prompts_per_s": {k: round(v, 2) for k, v in marginal.items()},
                "fixed_s": {k: round(v, 1) for k, v in fixed.items()},
            }
        )
    )
    print(f"ratio {marginal['ray-2x1'] / marginal['ray-1x1']:.2f}  (2 Ray workers over 1, one CPU each)")
    print(f"ratio {marginal['local'] / marginal['ray-1']:.2f}  (local path over Ray on one worker with every CPU)")


if __name__ == "__main__":
    main()
