"""Stages on a Ray cluster: Ray Data spreads a stage's shards over a pool of actors, each set up once (a sampler with
its vLLM engine, a reward model) and then given one shard at a time, and the driver writes each shard into the run
directory as it comes back: the same files and manifest as the local path. So every later stage is unchanged, a
killed driver resumes at the shards it had not written, and the rows are the local path's (each prompt is sampled
with its own seed, each response judged on its own, whichever actor takes the shard).

Used by the sample stage (`sampler.ray`, `sources[i].ray`, `fusechat3 sample --ray`), the score stage
(`scoring.ray`, `fusechat3 score --ray`) and the explicit path's represent stage (`explicit.represent.ray`,
`sources[i].ray`, `fusechat3 represent --ray`). Payloads and results travel pickled: a representation holds raw
array bytes, and floats come back bit for bit.

Why Ray Data and not `ray.data.llm`: its vLLM processor samples rows with its own request building and chat
templating; the stages need our samplers' exact behaviour (per-prompt seeds, n per domain, skipped prompts,
chat-template overrides, the openai and hf backends) and our judges, so the actors wrap them.
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field

from fusechat3.config import Section


class RaySpec(Section):
    """Where a stage's shards run on Ray: `sampler.ray`, `sources[i].ray` (e.g. a 70B model's tensor-parallel
    replicas), `scoring.ray`."""

    address: str | None = None  # "auto" (a cluster started with `ray start`), "ray://host:10001"; None: a local Ray
    replicas: int = Field(1, ge=1)  # actors, each set up once, taking shards side by side
    gpus_per_replica: float = Field(0.0, ge=0)  # the engine's tensor_parallel_size on GPU nodes; 0 on CPU
    cpus_per_replica: float = Field(1.0, gt=0)


def with_address(spec: RaySpec | None, address: str | None) -> RaySpec | None:
    """`spec` with the CLI's `--ray` applied: an address, or "local" (a local Ray); None leaves `spec` as it is."""
    if address is None:
        return spec
    return (spec or RaySpec()).model_copy(update={"address": None if address == "local" else address})


def add_ray_argument(parser: Any, where: str) -> None:
    """The `--ray [ADDRESS]` option of a stage command that can run on Ray (`where`: its recipe key)."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help=f"run on Ray: the cluster at ADDRESS (auto, ray://host:10001), or a local Ray without one; replicas and "
        f"resources from the recipe's {where}",
    )


def connect(address: str | None) -> None:
    """Join the cluster at `address` (None: start a local Ray), once per process; an already connected Ray (a test,
    a notebook) is used as it is."""
    import logging

    import ray
    import ray.data

    from fusechat3.logs import quiet_third_party

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    # The stage reports progress per shard itself: no Ray Data bars, nor its block of progress lines every 10 s in a
    # log file, nor its INFO lines on each dataset's execution.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    quiet_third_party()


def spare_cpus(spec: RaySpec) -> float:
    """The cluster's CPUs left beside `spec.replicas` actors (connected first): room for CPU tasks of their own."""
    import ray

    connect(spec.address)
    return ray.cluster_resources().get("CPU", 0.0) - spec.replicas * spec.cpus_per_replica


@functools.cache
def _as_task(fn: Callable) -> Any:
    import ray

    return ray.remote(num_cpus=1)(fn)


def cpu_tasks(fn: Callable, arglists: list[tuple]) -> list:
    """`fn(*args)` for each of `arglists` as Ray tasks of one CPU each, wherever the cluster has one free (called from
    an actor or a driver); the results in order. The score stage's code sandbox fans out this way
    (`fusechat3.scoring.sandbox_pool.run_tests_many`), so the programs run on the CPU nodes, not beside the reward
    model."""
    import ray

    task = _as_task(fn)
    return ray.get([task.remote(*args) for args in arglists])


class _ShardWorker:
    """A Ray Data actor: `setup()` once (it returns the function that does one shard), then one shard per call.

    The setup runs at the first call, not in `__init__`: Ray Data calls the actor from a thread of its own, not the
    one that constructed it, and an engine has to run on the thread that made it. vLLM's CPU build binds its
    OpenMP threads to the cores from the thread that starts the engine; called from another thread, it gets an
    unbound team of threads and samples about 40% slower (measured on the toy model)."""

    def __init__(self, setup: Callable[[], Callable[[Any], Any]]) -> None:
        self.setup: Callable[[], Callable[[Any], Any]] | None = setup
        self.work: Callable[[Any], Any] | None = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        if self.work is None:
            self.work = self.setup()
            self.setup = None
        out: dict[str, list] = {"k": [], "result": [], "seconds": []}
        for k, payload in zip(batch["k"], batch["payload"], strict=True):
            t0 = time.time()
            result = self.work(pickle.loads(payload))
            out["k"].append(int(k))
            out["result"].append(pickle.dumps(result))
            out["seconds"].append(time.time() - t0)
        return out


def run_shards(
    spec: RaySpec,
    setup: Callable[[], Callable[[Any], Any]],
    shards: list[tuple[int, Any]],
    size_of: Callable[[Any], int],
    progress: Callable[[int], None],
) -> Iterator[tuple[int, Any, float]]:
    """(shard index, result, seconds) for each of `shards` ((index, picklable payload)), in the order they finish,
    done by `spec.replicas` actors that each call `setup()` once; `progress` gets `size_of(payload)` per shard."""
    import os

    import ray

    connect(spec.address)
    env = {}
    if spec.gpus_per_replica == 0 and int(spec.cpus_per_replica) < (os.cpu_count() or 1):
        # A CPU actor with part of a node's CPUs (the driver's node size taken for the others') gets as many threads,
        # from its process start: vLLM's CPU build would otherwise bind its threads to every core in each actor, and
        # the actors would share them. (Set later, in the actor, it reaches only the thread that set it: vLLM's
        # attention then sees two thread counts and stops.)
        env = {"OMP_NUM_THREADS": str(max(1, int(spec.cpus_per_replica))), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    items = [{"k": k, "payload": pickle.dumps(payload)} for k, payload in shards]
    results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _ShardWorker,
        fn_constructor_kwargs={"setup": setup},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=spec.replicas),
        num_gpus=spec.gpus_per_replica,
        num_cpus=spec.cpus_per_replica,
        runtime_env={"env_vars": env},
    )
    sizes = {k: size_of(payload) for k, payload in shards}
    for row in results.iter_rows():
        k = int(row["k"])
        progress(sizes[k])
        yield k, pickle.loads(row["result"]), float(row["seconds"])
