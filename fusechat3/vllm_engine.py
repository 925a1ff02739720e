"""An in-process offline vLLM engine (`vllm.LLM`): started with the settings this project relies on, and shut
down so that another engine can start in the same process afterwards.

Used by the "vllm" sampling backend (`fusechat3.sampling.vllm`) and the "vllm" reward backend
(`fusechat3.scoring.reward_vllm`). vLLM and torch are imported inside the functions: importing this module
stays cheap.

    llm = open_llm("path/or/hub-id", runner="pooling", max_model_len=4096)
    ...
    close_llm(self)  # shuts down self.llm and sets it to None
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import logging
import os
from typing import Any

from fusechat3.errors import RecipeError

# On a machine without CUDA, the engine settings vLLM's CPU build works with (on GPU: vLLM's own). A caller
# may add its own (the sampler turns chunked prefill off); the caller's engine options override them.
CPU_DEFAULTS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True}


def set_engine_env() -> bool:
    """Set vLLM's environment defaults (a value already set wins); True on a machine without CUDA.

    They are read by vLLM at import / engine start, so they must be set before `import vllm`."""
    import torch

    # vLLM's INFO lines (full engine config, per engine) drown the stage output; its
    # progress bar stays. VLLM_LOGGING_LEVEL=INFO brings them back.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM's records go to the root logger's handlers (the console, a stage's log file, the noise filter of
    # `fusechat3.logs`) instead of a handler of its own; VLLM_CONFIGURE_LOGGING=1 gives vLLM its own again.
    if os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0") == "0":
        logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
    if torch.cuda.is_available():
        return False
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: close_llm() frees it
    return True


def check_engine_kwargs(engine_kwargs: dict[str, Any], where: str) -> None:
    """An unknown engine option is one line naming `where` (e.g. "sampler.engine"), not a TypeError deep
    inside vLLM."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    allowed = set(inspect.signature(LLM.__init__).parameters) | {f.name for f in dataclasses.fields(EngineArgs)}
    allowed -= {"self", "kwargs", "model"}
    unknown = sorted(set(engine_kwargs) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown vLLM option(s) {unknown}; use vllm.LLM / EngineArgs argument names")


def open_llm(
    model: str,
    *,
    runner: str | None = None,
    cpu_defaults: dict[str, Any] = CPU_DEFAULTS,
    where: str = "vllm engine",
    **engine_kwargs: Any,
) -> Any:
    """Start a `vllm.LLM` for `model` (a local folder or a Hub id), in this process.

    runner: vLLM's runner ("generate", "pooling", ...; None: vLLM's choice). cpu_defaults: the engine options
    used on a machine without CUDA, under `engine_kwargs`. An engine option vLLM does not know raises a
    `RecipeError` naming `where`; whatever vLLM raises while starting the engine is passed on."""
    on_cpu = set_engine_env()
    kwargs = {**(cpu_defaults if on_cpu else {}), **engine_kwargs}
    check_engine_kwargs(kwargs, where)
    if runner is not None:
        kwargs["runner"] = runner
    from vllm import LLM

    from fusechat3.logs import quiet_third_party

    quiet_third_party()  # the handlers torch and vLLM installed on import

    return LLM(model=model, **kwargs)


def close_llm(owner: Any, attr: str = "llm") -> None:
    """Shut down the engine at `owner.<attr>` and set that attribute to None (nothing to do when it is None
    already), so that another engine can be created in this process.

    It takes the owner, not the engine, so that the last reference is dropped before the memory is collected."""
    llm = getattr(owner, attr)
    if llm is None:
        return
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    setattr(owner, attr, None)
    del llm
    gc.collect()
    # Tears down the (single-rank) distributed state the engine set up, so the next
    # engine can initialise it again.
    cleanup_dist_env_and_memory()
