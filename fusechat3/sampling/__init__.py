"""Sampling: the `Sampler` protocol and its backends, registered by name.

    from fusechat3.sampling import GenParams, get_sampler
    sampler = get_sampler("vllm", "path/or/hub-id", max_model_len=4096)
    completions = sampler.generate([[{"role": "user", "content": "Hi"}]], GenParams(n=5))
    sampler.close()

Importing this package does not import torch, transformers or vLLM: each backend
imports them when it is created.
"""

from fusechat3.sampling import hf as _hf  # noqa: F401  (registers "hf")
from fusechat3.sampling import openai as _openai  # noqa: F401  (registers "openai")
from fusechat3.sampling import vllm as _vllm  # noqa: F401  (registers "vllm")
from fusechat3.sampling.base import Completion, GenParams, Sampler, backends, get_sampler, register

__all__ = ["Completion", "GenParams", "Sampler", "backends", "get_sampler", "register"]
