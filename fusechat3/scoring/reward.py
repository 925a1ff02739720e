"""Reward-model scoring of whole conversations (prompt + response), for the instruction data rules.

`RewardModel(model, backend="transformers", ...)` loads a reward model with one output (a Skywork / TRL-trained
`...ForSequenceClassification` with num_labels 1, the toy world's, or an ArmoRM-style custom-code model) and
its tokenizer, from a local folder or a Hub id, with the backend registered under that name:

- "transformers" (`reward_hf`, the default): `AutoModelForSequenceClassification`, batched under a token
  budget with right padding; custom code (`trust_remote_code`) included;
- "vllm" (`reward_vllm`): an offline vLLM pooling engine, for the architectures vLLM knows as
  `...ForSequenceClassification` (not custom code).

What every backend shares (this module): conversations are scored in the reward model's OWN chat template,

- rendered to text with the template, then tokenized without adding special tokens (the template writes BOS
  where the model wants it: adding them again would double it);
- never truncated: a conversation longer than `max_length` tokens gets (None, "too_long"), because cutting it
  would score a different (partial) response;
- the model pools at the last token that is not `pad_token_id`, which needs one in its config (set here from
  the tokenizer when the checkpoint lacks it);
- a non-finite score is (None, "non_finite"); a malformed conversation is (None, "bad_conversation"); results
  come back in input order.

A backend is a subclass of `RewardModel` registered with `@register_reward("name")`; it imports its heavy
libraries inside its methods, so importing this module imports neither torch, transformers nor vLLM.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from typing import Any

from fusechat3.errors import RecipeError, UserError

log = logging.getLogger(__name__)

Reward = tuple[float | None, str]

_BACKENDS: dict[str, type[RewardModel]] = {}


def register_reward(name: str) -> Callable[[type[RewardModel]], type[RewardModel]]:
    """Class decorator: make a `RewardModel` subclass available under `name` (`RewardModel(..., backend=name)`)."""

    def wrap(cls: type[RewardModel]) -> type[RewardModel]:
        cls.backend = name  # for messages
        _BACKENDS[name] = cls
        return cls

    return wrap


def reward_backends() -> list[str]:
    """The registered reward backend names."""
    return sorted(_BACKENDS)


def check_backend(backend: str, where: str = "scoring.reward_model.backend") -> None:
    """A recipe's reward backend name must be registered: else one line naming the key and the choices."""
    if backend not in _BACKENDS:
        raise RecipeError(f"key '{where}' must name a reward backend ({', '.join(reward_backends())}), got {backend!r}")


def _backend_class(model: str, backend: str) -> type[RewardModel]:
    if backend not in _BACKENDS:
        raise UserError(f"reward model {model}: unknown backend {backend!r}; use one of {', '.join(reward_backends())}")
    return _BACKENDS[backend]


def load_reward_model(model: str, backend: str = "transformers", **options: Any) -> RewardModel:
    """Load `model` with the reward backend named `backend`; `options` as for `RewardModel`."""
    return _backend_class(model, backend)(model, **options)


def _is_conversation(conversation: Any) -> bool:
    return (
        isinstance(conversation, list)
        and bool(conversation)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in conversation)
    )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def token_budget_batches(lengths: list[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most `batch_size` rows whose padded size
    (rows x longest) stays within `max_tokens` (None: rows only). A sequence longer than the budget is a batch
    of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches, start = [], 0
    while start < len(order):
        rows = batch_size
        if max_tokens is not None:  # the first row is the longest: it sets the padded width
            rows = max(1, min(rows, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class RewardModel:
    """A reward model; `score(conversations)` -> [(reward, "ok") | (None, reason)].

    `RewardModel(model, backend=..., ...)` creates the subclass registered under `backend`. A subclass
    implements `_load` (and `_start` if it needs the final `max_length`), `_values` and `_release`."""

    backend: str = ""  # the registered name (set by `register_reward`)
    _closed = False

    def __new__(cls, model: str, *args: Any, **kwargs: Any) -> RewardModel:
        if cls is RewardModel:  # dispatch on the backend name
            cls = _backend_class(model, kwargs.get("backend") or "transformers")
        return super().__new__(cls)

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        max_length: int = 4096,
        max_tokens_per_batch: int | None = 16384,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        backend: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """batch_size: most rows per forward pass; max_tokens_per_batch: most padded tokens (rows x longest) per
        forward pass, None for no token budget. device: "cuda", "cpu", "auto" (spread over the visible GPUs) or
        None (cuda when available); dtype: "bfloat16", "float32", ... or None (float32 on CPU, the checkpoint's
        own dtype on GPU). backend: a name in `reward_backends()`, "transformers" or "vllm" (device is then
        vLLM's choice; engine_kwargs go to `vllm.LLM`)."""
        if batch_size < 1 or max_length < 1 or (max_tokens_per_batch is not None and max_tokens_per_batch < 1):
            raise UserError(
                f"reward model {model}: batch_size, max_length and max_tokens_per_batch must be >= 1, got "
                f"{batch_size}, {max_length} and {max_tokens_per_batch}"
            )
        if backend is not None and backend != self.backend:  # a caller's bug: RewardModel(backend=...) dispatches
            raise ValueError(f"reward model {model}: backend {backend!r} given to the {self.backend!r} backend")
        self.name = model
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.model: Any = None
        load = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model, **load)
            config = self._load(load, device=device, dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserError(
                f"reward model {model!r}: cannot load it ({_first_line(e)}); give a local folder or a Hub id of a "
                "sequence-classification model (with trust_remote_code for custom code)"
            ) from e
        self.pad_id = self._ensure_pad_id(config)
        self.max_length = self._length_limit(config, max_length)
        self._start(load, dtype=dtype, engine_kwargs=engine_kwargs or {})

    # --- what a backend implements --------------------------------------------------------------------------

    def _load(self, load: dict[str, Any], *, device: str | None, dtype: str | None) -> Any:
        """Load the model (or what the backend needs of it) and return the config it pools with; `load` holds
        trust_remote_code and revision. An OSError or ValueError here is reported as "cannot load it"."""
        raise NotImplementedError

    def _start(self, load: dict[str, Any], *, dtype: str | None, engine_kwargs: dict[str, Any]) -> None:
        """Called once pad_id and max_length are final (e.g. to start an engine); nothing by default."""

    def _values(self, sequences: list[list[int]]) -> list[float]:
        """The raw reward of each token sequence (each non-empty, at most max_length long), in order."""
        raise NotImplementedError

    def _release(self) -> None:
        """Drop the model (and engine) so that its memory can be freed."""
        self.model = None

    # --- shared ---------------------------------------------------------------------------------------------

    def _ensure_pad_id(self, config: Any) -> int:
        """The model pools at the last token that is not `pad_token_id`: without one it cannot batch."""
        text_config = config.get_text_config()
        if text_config.pad_token_id is not None:
            return int(text_config.pad_token_id)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise UserError(
                f"reward model {self.name}: no pad token in its config nor its tokenizer (nor an EOS); "
                "set pad_token_id in its config.json"
            )
        text_config.pad_token_id = pad
        config.pad_token_id = pad
        log.info("reward model %s: pad_token_id set to %d from the tokenizer", self.name, pad)
        return int(pad)

    def _length_limit(self, config: Any, max_length: int) -> int:
        positions = getattr(config.get_text_config(), "max_position_embeddings", None)
        if positions and positions < max_length:
            log.warning("reward model %s: max_length %d capped to its %d positions", self.name, max_length, positions)
            return int(positions)
        return max_length

    def _texts(self, conversations: list[list[dict]]) -> dict[int, str]:
        texts = {}
        for i, conversation in enumerate(conversations):
            if not _is_conversation(conversation):
                continue
            try:
                texts[i] = self.tokenizer.apply_chat_template(conversation, tokenize=False)
            except Exception:  # a template may refuse a conversation (roles out of order, ...): a counted skip
                log.debug("reward model %s: chat template failed", self.name, exc_info=True)
        return texts

    def score(self, conversations: list[list[dict]]) -> list[Reward]:
        """One (reward, "ok") or (None, reason) per conversation, in input order."""
        if self._closed:
            raise RuntimeError(f"reward model {self.name} was closed; create a new RewardModel")
        results: list[Reward] = [(None, "bad_conversation")] * len(conversations)
        texts = self._texts(conversations)
        keys = list(texts)
        # One call: a fast tokenizer encodes a list in parallel.
        encoded = self.tokenizer([texts[i] for i in keys], add_special_tokens=False)["input_ids"] if keys else []
        ids: dict[int, list[int]] = {}
        for i, tokens in zip(keys, encoded, strict=True):
            if not tokens:
                continue
            if len(tokens) > self.max_length:
                results[i] = (None, "too_long")
                continue
            ids[i] = list(tokens)
        live = list(ids)
        values = self._values([ids[i] for i in live]) if live else []
        for i, value in zip(live, values, strict=True):
            results[i] = (value, "ok") if math.isfinite(value) else (None, "non_finite")
        return results

    def _one_value_each(self, rows: list[list[float]]) -> list[float]:
        if rows and len(rows[0]) != 1:
            raise UserError(
                f"reward model {self.name}: it outputs {len(rows[0])} values per sequence; a reward model "
                "has one (num_labels=1)"
            )
        return [row[0] for row in rows]

    def close(self) -> None:
        """Free the model's memory (GPU included); the object cannot score afterwards."""
        import torch

        self._closed = True
        self._release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> RewardModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The backends register themselves on import (they import torch / transformers / vLLM inside their methods).
from fusechat3.scoring import reward_hf as _hf  # noqa: E402, F401
from fusechat3.scoring import reward_vllm as _vllm  # noqa: E402, F401
