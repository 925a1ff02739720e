"""What every sampling backend shares: the result type, the `Sampler` protocol, the registry
of backends by name, and the prompt rendering (the sampling settings are `params.GenParams`).

Backends live one per file (vllm.py, hf.py) and register themselves here with
`@register("name")`; they import their heavy libraries inside functions, so importing
this package stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fusechat3.errors import RecipeError, RowError
from fusechat3.sampling.params import GenParams
from fusechat3.schema import stable_hash

logger = logging.getLogger(__name__)


@dataclass
class Completion:
    """One generated response."""

    text: str
    finish_reason: str  # "stop" | "length" | "error" (schema.FINISH_REASONS)
    num_tokens: int  # generated tokens, the EOS / stop token included
    # Why there is no response when finish_reason is "error": "prompt_too_long" (the prompt
    # plus max_tokens exceeds the context) or "rejected" (a server refused the request).
    error: str | None = None


@runtime_checkable
class Sampler(Protocol):
    """A loaded model that answers chat conversations.

    `generate` returns, for each conversation and in the same order, `params.n`
    completions. A conversation the model cannot answer (prompt too long for its
    context) gets `n` completions with finish_reason "error" and the reason in
    `Completion.error`, never an exception, so one bad prompt does not fail a shard;
    backends count those in `stats`.

    `seeds` (one per conversation) make each prompt's samples depend on its own seed
    only, not on what it is batched with, where the backend can (vllm, openai); the
    pipeline derives them from the source's `sampling.seed` and the prompt_id, so a resumed or
    re-sharded run samples the same responses. Without `seeds`, they are derived from
    `params.seed` and the position in the call. `progress(k)` is called as k more
    conversations are answered (for a progress bar).
    """

    stats: Counter

    def generate(
        self,
        conversations: list[list[dict]],
        params: GenParams,
        seeds: list[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]: ...

    def close(self) -> None: ...


# Engine options that change how fast or where a model runs, not what it samples: they
# stay out of the sampling key, so changing them (more GPUs, another server) resumes a
# run instead of starting it over. Every other option (dtype, revision, max_model_len,
# quantization, ...) is part of the key.
SPEED_ONLY_OPTIONS = frozenset(
    {
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "data_parallel_size",
        "distributed_executor_backend",
        "gpu_memory_utilization",
        "swap_space",
        "cpu_offload_gb",
        "enable_prefix_caching",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enforce_eager",
        "disable_log_stats",
        "base_url",
        "api_key_env",
        "max_concurrency",
        "timeout_s",
        "max_retries",
        "device",
    }
)


def sampling_key(recipe: Any, source: Any) -> str:
    """What identifies one source's samples: model, revision and every output-changing
    engine option, backend, sampling parameters (seed included) and chat template."""
    backend, engine = recipe.sampler_for(source)
    return stable_hash(
        {
            "model": source.model,
            "revision": engine.get("revision"),
            "engine": {k: v for k, v in engine.items() if k not in SPEED_ONLY_OPTIONS},
            "backend": backend,
            "sampling": source.sampling.model_dump(),
            "chat_template": recipe.chat_template(source),
        },
        12,
    )


_BACKENDS: dict[str, Callable[..., Sampler]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a backend available to `get_sampler` under `name`."""

    def wrap(cls: type) -> type:
        cls.backend = name  # for messages and counters
        _BACKENDS[name] = cls
        return cls

    return wrap


def backends() -> list[str]:
    return sorted(_BACKENDS)


def get_sampler(backend: str, model: str, **engine_kwargs: Any) -> Sampler:
    """Load `model` (a local directory or a Hub id) with the backend named `backend`.

    `engine_kwargs` are the recipe's free-form `sampler.engine` options, passed to the
    backend's engine (e.g. `vllm.LLM(...)` for "vllm").
    """
    if backend not in _BACKENDS:
        raise RecipeError(f"sampler backend {backend!r} is not registered; choose one of {backends()}")
    return _BACKENDS[backend](model, **engine_kwargs)


def check_conversation(conversation: list[dict], index: int | str) -> None:
    """A conversation is a non-empty chat list of {role, content} strings that ends with a
    non-empty user turn; anything else is one error line naming `index`."""
    if not isinstance(conversation, (list, tuple)) or not len(conversation):
        raise RowError(f"conversation {index}: must be a non-empty list of {{role, content}} messages")
    for k, m in enumerate(conversation):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(f"conversation {index}: message {k} must be {{role: str, content: str}}, got {m!r:.80}")
    last = conversation[-1]
    if last["role"] != "user":
        raise RowError(f"conversation {index}: the last message must be the user's, got {last['role']!r}")
    if not last["content"].strip():
        raise RowError(f"conversation {index}: the user message is empty; drop the prompt or give it text")


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from `parts` (stable across runs and machines; servers take int32)."""
    return int(stable_hash(list(parts), 8), 16) & 0x7FFFFFFF


def request_seeds(conversations: list, params: GenParams, seeds: list[int] | None) -> list[int]:
    """The per-conversation seeds `generate` uses: the caller's, else from params.seed and the position."""
    if seeds is None:
        return [derive_seed(params.seed, i) for i in range(len(conversations))]
    if len(seeds) != len(conversations):
        raise ValueError(f"generate: {len(seeds)} seeds for {len(conversations)} conversations")
    return list(seeds)


def chat_prompt_ids(
    tokenizer: Any, conversations: list[list[dict]], chat_template: str | None = None
) -> list[list[int]]:
    """Token ids of each conversation in the model's OWN chat template (or `chat_template`,
    a Jinja template from the recipe), ready for the reply.

    Rendered to text first and then tokenized without special tokens, as vLLM's own
    chat path does: the template already writes BOS where the model wants it. One
    batched call each (the fast tokenizer encodes a batch in parallel).
    """
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(
        [list(c) for c in conversations], tokenize=False, add_generation_prompt=True, chat_template=chat_template
    )
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass
class Plan:
    """What a backend generates for one `generate` call (see `plan_requests`)."""

    seeds: list[int]  # one per conversation
    prompt_ids: list[list[int]] | None  # rendered prompts (None: no local tokenizer)
    fit: list[int]  # indices of the conversations to send
    results: list[list[Completion]]  # the answer, pre-filled with "prompt_too_long" errors


def plan_requests(
    sampler: Any,
    conversations: list[list[dict]],
    params: GenParams,
    seeds: list[int] | None,
    progress: Callable[[int], None] | None,
) -> Plan:
    """What every backend does before generating: check the conversations, fix the seeds,
    render the prompts and set aside those too long for the context (their results are
    final: error completions, already reported to `progress`).

    The sampler's `stats`, `chat_template`, `tokenizer` and `max_model_len` are used; a
    sampler without a tokenizer (a remote server) sends every conversation."""
    for i, conversation in enumerate(conversations):
        check_conversation(conversation, i)
    seeds = request_seeds(conversations, params, seeds)
    tokenizer = getattr(sampler, "tokenizer", None)
    if tokenizer is None:
        prompt_ids, fit = None, list(range(len(conversations)))
    else:
        prompt_ids = chat_prompt_ids(tokenizer, conversations, sampler.chat_template)
        fit = split_too_long(prompt_ids, params.max_tokens, sampler.max_model_len, sampler.stats, sampler.backend)
    results = [error_completions(params.n, "prompt_too_long") for _ in conversations]
    if progress is not None and len(fit) < len(conversations):
        progress(len(conversations) - len(fit))
    return Plan(seeds, prompt_ids, fit, results)


def samples_per_request(params: GenParams) -> int:
    """Greedy samples of one prompt are all the same, and neither vLLM nor transformers
    accept n > 1 without sampling: ask for one and repeat it (`repeat_greedy`)."""
    return 1 if params.greedy else params.n


def repeat_greedy(completions: list[Completion], params: GenParams) -> list[Completion]:
    if not params.greedy:
        return completions
    return [dataclasses.replace(completions[0]) for _ in range(params.n)]


def error_completions(n: int, reason: str) -> list[Completion]:
    return [Completion(text="", finish_reason="error", num_tokens=0, error=reason) for _ in range(n)]


def split_too_long(
    prompt_ids: list[list[int]], max_tokens: int, max_model_len: int, stats: Counter, backend: str
) -> list[int]:
    """Indices of the prompts that fit (prompt + max_tokens <= max_model_len); counts and logs the rest."""
    fit = [i for i, ids in enumerate(prompt_ids) if len(ids) + max_tokens <= max_model_len]
    too_long = len(prompt_ids) - len(fit)
    if too_long:
        stats["prompt_too_long"] += too_long
        logger.warning(
            "%s: %d prompt(s) longer than max_model_len %d minus max_tokens %d get finish_reason 'error'",
            backend,
            too_long,
            max_model_len,
            max_tokens,
        )
    return fit


def count_finishes(results: list[list[Completion]], stats: Counter) -> None:
    stats["requests"] += len(results)
    for completions in results:
        for c in completions:
            stats[f"finish_{c.finish_reason}"] += 1
