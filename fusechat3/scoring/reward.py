"""Reward-model scoring of whole conversations (prompt + response), for the instruction data rules.

`RewardModel` loads any transformers `AutoModelForSequenceClassification` with one output (num_labels 1: a
Skywork / TRL-trained reward model, or the toy world's) or a custom-code reward model whose output carries a
`score` field (ArmoRM-style, `trust_remote_code`), with its tokenizer, from a local folder or a Hub id, and
scores conversations in the reward model's OWN chat template:

- rendered to text with the template, then tokenized without adding special tokens (the template writes BOS
  where the model wants it: adding them again would double it);
- never truncated: a conversation longer than `max_length` tokens gets (None, "too_long"), because cutting it
  would score a different (partial) response;
- sorted by length (longest first, so an out-of-memory shows up at once) and cut into batches under a token
  budget (rows x longest <= `max_tokens_per_batch`, at most `batch_size` rows), padded on the right, results
  back in input order; the score is read by the model's own pooling at the last non-pad token, which needs
  `pad_token_id` in its config (set here from the tokenizer when the checkpoint lacks it). Right padding with
  an attention mask leaves every real token's computation unchanged, so a score does not depend on what it is
  batched with (to float rounding);
- the reward is the output's `score` when it has one (custom reward models put their preference score there and
  other heads in `logits`), else `logits[:, 0]`;
- a non-finite score is (None, "non_finite"); a malformed conversation is (None, "bad_conversation").

`backend="vllm"` runs the forward passes in an offline vLLM pooling engine instead (architectures vLLM knows as
`...ForSequenceClassification`; not custom code), with the same rendering, length check and verdicts.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from typing import Any

log = logging.getLogger(__name__)

Reward = tuple[float | None, str]
BACKENDS = ("transformers", "vllm")


def _is_conversation(conversation: Any) -> bool:
    return (
        isinstance(conversation, list)
        and bool(conversation)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in conversation)
    )


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
    """A sequence-classification reward model; `score(conversations)` -> [(reward, "ok") | (None, reason)]."""

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
        backend: str = "transformers",
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """batch_size: most rows per forward pass; max_tokens_per_batch: most padded tokens (rows x longest) per
        forward pass, None for no token budget. device: "cuda", "cpu", "auto" (spread over the visible GPUs) or
        None (cuda when available); dtype: "bfloat16", "float32", ... or None (float32 on CPU, the checkpoint's
        own dtype on GPU). backend: "transformers" or "vllm" (device is then vLLM's choice; engine_kwargs go to
        `vllm.LLM`)."""
        if batch_size < 1 or max_length < 1 or (max_tokens_per_batch is not None and max_tokens_per_batch < 1):
            raise ValueError(f"reward model {model}: batch_size, max_length and max_tokens_per_batch must be >= 1")
        if backend not in BACKENDS:
            raise ValueError(f"reward model {model}: unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.name = model
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.backend = backend
        self.model: Any = None
        self.llm: Any = None
        load = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            from transformers import AutoConfig, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model, **load)
            if backend == "transformers":
                self._load_transformers(model, device, dtype, load)
                config = self.model.config
            else:
                config = AutoConfig.from_pretrained(model, **load)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"reward model {model!r}: cannot load it ({first}); give a local folder or a Hub id of a "
                "sequence-classification model (with trust_remote_code for custom code)"
            ) from e
        self.pad_id = self._ensure_pad_id(config)
        self.max_length = self._length_limit(config, max_length)
        if backend == "vllm":
            self._load_vllm(model, dtype, load, engine_kwargs or {})

    def _load_transformers(self, model: str, device: str | None, dtype: str | None, load: dict) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float32" if device == "cpu" else "auto")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model, dtype=dtype, device_map="auto" if device == "auto" else None, **load
        )
        if device != "auto":
            self.model.to(device)
        self.model.eval()

    def _load_vllm(self, model: str, dtype: str | None, load: dict, engine_kwargs: dict[str, Any]) -> None:
        import torch

        # Read by vLLM at import / engine start, so they must be set before `import vllm`.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        kwargs: dict[str, Any] = {}
        if not torch.cuda.is_available():  # the settings vLLM's CPU build works with
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: close() frees it
            kwargs = {"dtype": "float32", "enforce_eager": True}
        if dtype:
            kwargs["dtype"] = dtype
        from vllm import LLM

        kwargs = {"max_model_len": self.max_length, **kwargs, **engine_kwargs}
        try:
            self.llm = LLM(model=model, runner="pooling", **load, **kwargs)
        except Exception as e:  # vLLM raises many types for an unsupported architecture: one line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"reward model {model!r}: vLLM cannot serve it as a pooling model ({first}); use backend 'transformers'"
            ) from e

    def _ensure_pad_id(self, config: Any) -> int:
        """The model pools at the last token that is not `pad_token_id`: without one it cannot batch."""
        text_config = config.get_text_config()
        if text_config.pad_token_id is not None:
            return int(text_config.pad_token_id)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError(
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
        if self.model is None and self.llm is None:
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
        values = self._scores_vllm(live, ids) if self.backend == "vllm" else self._scores_transformers(live, ids)
        for i, value in zip(live, values, strict=True):
            results[i] = (value, "ok") if math.isfinite(value) else (None, "non_finite")
        return results

    def _scores_transformers(self, live: list[int], ids: dict[int, list[int]]) -> list[float]:
        from tqdm.auto import tqdm

        values: list[float] = [math.nan] * len(live)
        batches = token_budget_batches([len(ids[i]) for i in live], self.batch_size, self.max_tokens_per_batch)
        with tqdm(total=len(live), desc=f"reward {self.name}", unit="sample", disable=not live) as bar:
            for batch in batches:
                for k, value in zip(batch, self._forward([ids[live[k]] for k in batch]), strict=True):
                    values[k] = value
                bar.update(len(batch))
        return values

    def _forward(self, sequences: list[list[int]]) -> list[float]:
        import torch

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding: positions of the real tokens start at 0
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        device = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        # Custom-code reward models (e.g. ArmoRM) return their preference score as `score`; others as `logits`.
        values = getattr(out, "score", None)
        values = out.logits if values is None else values
        return self._one_value_each(values.float().reshape(len(sequences), -1).tolist())

    def _one_value_each(self, rows: list[list[float]]) -> list[float]:
        if rows and len(rows[0]) != 1:
            raise ValueError(
                f"reward model {self.name}: it outputs {len(rows[0])} values per sequence; a reward model "
                "has one (num_labels=1)"
            )
        return [row[0] for row in rows]

    def _scores_vllm(self, live: list[int], ids: dict[int, list[int]]) -> list[float]:
        from vllm import PoolingParams

        if not live:
            return []
        prompts = []
        for i in live:
            # vLLM pools at the last token; transformers at the last one that is not `pad_token_id`. Dropping
            # trailing pad ids (where pad = EOS and the template ends with it) makes both pool the same token.
            seq = ids[i]
            end = len(seq)
            while end > 1 and seq[end - 1] == self.pad_id:
                end -= 1
            prompts.append({"prompt_token_ids": seq[:end]})
        # Raw logits: vLLM's classify applies a sigmoid/softmax by default. No bar of its own: the score
        # stage shows one for the whole stage.
        outs = self.llm.classify(prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return self._one_value_each([list(o.outputs.probs) for o in outs])

    def close(self) -> None:
        """Free the model's memory (GPU included); the object cannot score afterwards."""
        import torch

        self.model = None
        if self.llm is not None:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()
            cleanup_dist_env_and_memory()  # so that another engine can start in this process
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> RewardModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
