"""The sample stage on a Ray cluster: Ray Data spreads a source's shards over a pool of actors, each holding one
sampler (a vLLM engine, or any backend of the registry) for its whole life, and the driver writes each shard into
the run directory as it comes back, the same files and manifest as the local path. So every later stage is
unchanged, a killed job resumes at the shards it had not written, and the rows are the local path's: each prompt
is sampled with its own seed whichever actor takes its shard.

Why Ray Data and not `ray.data.llm`: its vLLM processor samples rows with its own request building and chat
templating; the stage needs our samplers' exact behaviour (per-prompt seeds, n per domain, skipped prompts,
chat-template overrides, the openai and hf backends), so the actors wrap `get_sampler` and `_sample_shard`.

    sampler:
      ray: {address: auto, replicas: 8, gpus_per_replica: 1}   # per source too: sources[i].ray
    fusechat3 sample recipe.yaml --ray auto
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field

from fusechat3.config import Section


class RaySpec(Section):
    """`sampler.ray` (every source) or `sources[i].ray` (one source, e.g. a 70B model's tensor-parallel replicas)."""

    address: str | None = None  # "auto" (a cluster started with `ray start`), "ray://host:10001"; None: a local Ray
    replicas: int = Field(1, ge=1)  # actors, each with its own engine, sampling shards side by side
    gpus_per_replica: float = Field(0.0, ge=0)  # the engine's tensor_parallel_size on GPU nodes; 0 on CPU
    cpus_per_replica: float = Field(1.0, gt=0)


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


class _ShardSampler:
    """A Ray Data actor: one sampler for its life, one shard per call."""

    def __init__(
        self, backend: str, model: str, chat_template: str | None, engine: dict, spec_json: str, cpus: float
    ) -> None:
        import os

        import torch

        from fusechat3.recipe import SourceSpec
        from fusechat3.sampling import get_sampler

        if not torch.cuda.is_available() and int(cpus) < (os.cpu_count() or 1):
            # On CPU nodes, an actor with part of the node's CPUs gets as many threads: vLLM's CPU build would
            # otherwise bind its threads to every core of the node in each actor, and the actors would share them.
            threads = max(1, int(cpus))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
            torch.set_num_threads(threads)

        self.spec = SourceSpec.model_validate_json(spec_json)
        self.sampler = get_sampler(backend, model, chat_template=chat_template, **engine)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from fusechat3.sampling.stage import _sample_shard

        out: dict[str, list] = {"k": [], "rows": [], "skipped": [], "seconds": []}
        for k, prompts, key in zip(batch["k"], batch["prompts"], batch["key"], strict=True):
            t0 = time.time()
            rows, skipped = _sample_shard(self.sampler, self.spec, json.loads(prompts), key, lambda n: None)
            out["k"].append(int(k))
            out["rows"].append(json.dumps(rows))
            out["skipped"].append(json.dumps(skipped))
            out["seconds"].append(time.time() - t0)
        return out


def sample_shards(
    ray_spec: RaySpec,
    spec: Any,
    sampler_args: tuple[str, str, str | None, dict],
    shards: list[tuple[int, list[dict]]],
    key: str,
    progress: Callable[[int], None],
) -> Iterator[tuple[int, list[dict], dict[str, str], float]]:
    """(shard index, Sample rows, skipped prompts, seconds) for each of `shards` ((index, prompts)), in the order
    they finish, sampled by `ray_spec.replicas` actors."""
    import ray

    connect(ray_spec.address)
    items = [{"k": k, "prompts": json.dumps(prompts), "key": key} for k, prompts in shards]
    backend, model, chat_template, engine = sampler_args
    results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _ShardSampler,
        fn_constructor_kwargs={
            "backend": backend,
            "model": model,
            "chat_template": chat_template,
            "engine": engine,
            "spec_json": spec.model_dump_json(),
            "cpus": ray_spec.cpus_per_replica,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=ray_spec.replicas),
        num_gpus=ray_spec.gpus_per_replica,
        num_cpus=ray_spec.cpus_per_replica,
    )
    sizes = {k: len(prompts) for k, prompts in shards}
    for row in results.iter_rows():
        k = int(row["k"])
        progress(sizes[k])
        yield k, json.loads(row["rows"]), json.loads(row["skipped"]), float(row["seconds"])
