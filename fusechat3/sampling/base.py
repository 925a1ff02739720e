"""What every sampling backend shares: the sampling settings, the result type, the
`Sampler` protocol, the registry of backends by name, and the prompt rendering.

Backends live one per file (vllm.py, hf.py) and register themselves here with
`@register("name")`; they import their heavy libraries inside functions, so importing
this package stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)


@dataclass
class GenParams:
    """One source's sampling settings (the recipe's per-source `sampling` block)."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = -1  # -1 or 0: no top-k filter
    repetition_penalty: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            problems.append(f"top_k must be -1/0 (off) or a positive integer, got {self.top_k!r}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            problems.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if problems:
            raise ValueError("sampling: " + "; ".join(problems))
        self.stop = list(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "sampling") -> GenParams:
        """Build from a recipe mapping; an unknown key or a bad value is one line naming `where`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**values)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None


@dataclass
class Completion:
    """One generated response."""

    text: str
    finish_reason: str  # "stop" | "length" | "error" (schema.FINISH_REASONS)
    num_tokens: int  # generated tokens, the EOS / stop token included


@runtime_checkable
class Sampler(Protocol):
    """A loaded model that answers chat conversations.

    `generate` returns, for each conversation and in the same order, `params.n`
    completions. A conversation the model cannot answer (prompt too long for its
    context) gets `n` completions with finish_reason "error", never an exception,
    so one bad prompt does not fail a shard; backends count those in `stats`.
    """

    stats: Counter

    def generate(self, conversations: list[list[dict]], params: GenParams) -> list[list[Completion]]: ...

    def close(self) -> None: ...


_BACKENDS: dict[str, Callable[..., Sampler]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a backend available to `get_sampler` under `name`."""

    def wrap(cls: type) -> type:
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
        raise ValueError(f"sampler backend {backend!r} is not registered; choose one of {backends()}")
    return _BACKENDS[backend](model, **engine_kwargs)


def check_conversation(conversation: list[dict], index: int) -> None:
    """A conversation is a non-empty chat list that ends with the user's turn."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"conversation {index}: must be a non-empty list of {{role, content}} messages")
    last = conversation[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        role = last.get("role") if isinstance(last, dict) else last
        raise ValueError(f"conversation {index}: the last message must be the user's, got {role!r}")


def chat_prompt_ids(tokenizer: Any, conversation: list[dict]) -> list[int]:
    """Token ids of `conversation` in the model's OWN chat template, ready for the reply.

    Rendered to text first and then tokenized without special tokens, as vLLM's own
    chat path does: the template already writes BOS where the model wants it.
    """
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def samples_per_request(params: GenParams) -> int:
    """Greedy samples of one prompt are all the same, and neither vLLM nor transformers
    accept n > 1 without sampling: ask for one and repeat it (`repeat_greedy`)."""
    return 1 if params.greedy else params.n


def repeat_greedy(completions: list[Completion], params: GenParams) -> list[Completion]:
    if not params.greedy:
        return completions
    return [dataclasses.replace(completions[0]) for _ in range(params.n)]


def error_completions(n: int) -> list[Completion]:
    return [Completion(text="", finish_reason="error", num_tokens=0) for _ in range(n)]


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
