"""Reward-model scoring of whole conversations (prompt + response), for the instruction data rules.

`RewardModel` loads any transformers `AutoModelForSequenceClassification` with one output (num_labels 1: a
Skywork / ArmoRM / TRL-trained reward model, or the toy world's) and its tokenizer, from a local folder or a Hub
id, and scores conversations in the reward model's OWN chat template:

- rendered to text with the template, then tokenized without adding special tokens (the template writes BOS
  where the model wants it: adding them again would double it);
- never truncated: a conversation longer than `max_length` tokens gets (None, "too_long"), because cutting it
  would score a different (partial) response;
- batched by length (longest first, so an out-of-memory shows up at once), padded on the right, results back in
  input order; the score is read by the model's own pooling at the last non-pad token, which needs
  `pad_token_id` in its config (set here from the tokenizer when the checkpoint lacks it);
- a non-finite score is (None, "non_finite"); a malformed conversation is (None, "bad_conversation").
"""

from __future__ import annotations

import gc
import logging
import math
from typing import Any

log = logging.getLogger(__name__)

Reward = tuple[float | None, str]


def _is_conversation(conversation: Any) -> bool:
    return (
        isinstance(conversation, list)
        and bool(conversation)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in conversation)
    )


class RewardModel:
    """A sequence-classification reward model; `score(conversations)` -> [(reward, "ok") | (None, reason)]."""

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        max_length: int = 4096,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        """device: "cuda", "cpu", "auto" (spread over the visible GPUs) or None (cuda when available);
        dtype: "bfloat16", "float32", ... or None (float32 on CPU, the checkpoint's own dtype on GPU)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1 or max_length < 1:
            raise ValueError(f"reward model {model}: batch_size and max_length must be >= 1")
        self.name = model
        self.batch_size = batch_size
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float32" if device == "cpu" else "auto")
        load = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, **load)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, dtype=dtype, device_map="auto" if device == "auto" else None, **load
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"reward model {model!r}: cannot load it ({first}); give a local folder or a Hub id of a "
                "sequence-classification model (with trust_remote_code for custom code)"
            ) from e
        if device != "auto":
            self.model.to(device)
        self.model.eval()
        self.pad_id = self._ensure_pad_id()
        self.max_length = self._length_limit(max_length)

    def _ensure_pad_id(self) -> int:
        """The model pools at the last token that is not `pad_token_id`: without one it cannot batch."""
        config = self.model.config.get_text_config()
        if config.pad_token_id is not None:
            return int(config.pad_token_id)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError(
                f"reward model {self.name}: no pad token in its config nor its tokenizer (nor an EOS); "
                "set pad_token_id in its config.json"
            )
        config.pad_token_id = pad
        self.model.config.pad_token_id = pad
        log.info("reward model %s: pad_token_id set to %d from the tokenizer", self.name, pad)
        return int(pad)

    def _length_limit(self, max_length: int) -> int:
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if positions and positions < max_length:
            log.warning("reward model %s: max_length %d capped to its %d positions", self.name, max_length, positions)
            return int(positions)
        return max_length

    def _token_ids(self, conversation: list[dict]) -> list[int] | None:
        if not _is_conversation(conversation):
            return None
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        except Exception:  # a template may refuse a conversation (roles out of order, ...): a counted skip
            log.debug("reward model %s: chat template failed", self.name, exc_info=True)
            return None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, conversations: list[list[dict]]) -> list[Reward]:
        """One (reward, "ok") or (None, reason) per conversation, in input order."""
        from tqdm.auto import tqdm

        if self.model is None:
            raise RuntimeError(f"reward model {self.name} was closed; create a new RewardModel")
        results: list[Reward] = [(None, "bad_conversation")] * len(conversations)
        ids: dict[int, list[int]] = {}
        for i, conversation in enumerate(conversations):
            tokens = self._token_ids(conversation)
            if tokens is None or not tokens:
                continue
            if len(tokens) > self.max_length:
                results[i] = (None, "too_long")
                continue
            ids[i] = tokens
        order = sorted(ids, key=lambda i: len(ids[i]), reverse=True)
        with tqdm(total=len(order), desc=f"reward {self.name}", unit="sample", disable=not order) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for i, value in zip(batch, self._forward([ids[i] for i in batch]), strict=True):
                    results[i] = (value, "ok") if math.isfinite(value) else (None, "non_finite")
                bar.update(len(batch))
        return results

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
        values = values.float().reshape(len(sequences), -1)
        if values.shape[1] != 1:
            raise ValueError(
                f"reward model {self.name}: it outputs {values.shape[1]} values per sequence; a reward model "
                "has one (num_labels=1)"
            )
        return values[:, 0].tolist()

    def close(self) -> None:
        """Free the model's memory (GPU included); the object cannot score afterwards."""
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> RewardModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
