"""The "hf" sampling backend: transformers' `generate`, batched with left padding.

For models or machines vLLM does not serve, and as the reference vLLM is checked
against. Same `GenParams` meaning as the vLLM backend: `n` samples per prompt, greedy
when temperature is 0. transformers has no per-sequence seed, so one call is seeded as
a whole (from the seeds of all its prompts): the same prompts in the same call give the
same samples (a resumed shard is re-sampled identically), but a prompt's samples depend
on the call it is in, unlike vLLM's per-request seeds.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from fusechat3.errors import RecipeError, UserError
from fusechat3.sampling.base import (
    Completion,
    GenParams,
    count_finishes,
    derive_seed,
    plan_requests,
    register,
    repeat_greedy,
    samples_per_request,
)

logger = logging.getLogger(__name__)

# The `sampler.engine` options this backend understands, with their defaults.
_ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": None,  # None: float32 on CPU, the checkpoint's dtype ("auto") on GPU
    "device": None,  # None: "cuda" when available, else "cpu"
    "batch_size": 16,  # prompts per generate() call
    "max_model_len": None,  # None: the model's max_position_embeddings
    "trust_remote_code": False,
    "revision": None,
}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a reply: the tokenizer's EOS and the checkpoint's generation-config EOS (as vLLM)."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise UserError(
            f"hf sampler: {model.name_or_path} has no EOS token (tokenizer nor generation_config); "
            "set eos_token_id in its generation_config.json"
        )
    return ids


@register("hf")
class HFSampler:
    """`get_sampler("hf", model, chat_template=None, dtype=..., device=..., batch_size=..., max_model_len=...)`."""

    def __init__(self, model: str, chat_template: str | None = None, **engine_kwargs: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        unknown = sorted(set(engine_kwargs) - set(_ENGINE_DEFAULTS))
        if unknown:
            raise RecipeError(f"sampler.engine: unknown hf option(s) {unknown}; allowed: {sorted(_ENGINE_DEFAULTS)}")
        opts = {**_ENGINE_DEFAULTS, **engine_kwargs}
        if isinstance(opts["batch_size"], bool) or not isinstance(opts["batch_size"], int) or opts["batch_size"] < 1:
            raise RecipeError(f"sampler.engine: batch_size must be an integer >= 1, got {opts['batch_size']!r}")
        self.model_name = model
        self.chat_template = chat_template
        self.stats: Counter = Counter()
        self.batch_size = int(opts["batch_size"])
        device = opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = opts["dtype"] or ("float32" if device == "cpu" else "auto")
        load = {"trust_remote_code": opts["trust_remote_code"], "revision": opts["revision"]}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, **load)
        except (OSError, ValueError) as e:  # a wrong path, Hub id or revision: transformers says which
            reason = " ".join(str(e).split())[:300]
            raise UserError(f"hf sampler: cannot load {model!r} ({reason}); check the model path or Hub id") from None
        self.tokenizer.padding_side = "left"  # decoder-only batches grow on the right
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **load).to(device).eval()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        if self.tokenizer.pad_token_id is None:  # many chat models ship without one; any id works under the mask
            self.tokenizer.pad_token_id = self.eos_ids[0]
        self.pad_id = self.tokenizer.pad_token_id
        # Only our GenParams decide sampling: drop the checkpoint's sampling defaults
        # (e.g. a top_k=20 in generation_config.json), as vLLM does for explicit params.
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        self.max_model_len = int(opts["max_model_len"] or self.model.config.max_position_embeddings)

    def generate(
        self,
        conversations: list[list[dict]],
        params: GenParams,
        seeds: list[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        import torch

        if self.model is None:
            raise RuntimeError(f"hf sampler for {self.model_name} was closed; create a new one with get_sampler")
        unsupported = [name for name in ("presence_penalty", "frequency_penalty") if getattr(params, name)]
        if unsupported:
            raise RecipeError(
                f"hf sampler ({self.model_name}): transformers has no {' or '.join(unsupported)}; set it to 0 or "
                "sample with the vllm or openai backend"
            )
        plan = plan_requests(self, conversations, params, seeds, progress)
        fit, prompt_ids, seeds, results = plan.fit, plan.prompt_ids, plan.seeds, plan.results
        torch.manual_seed(derive_seed(*seeds))
        for start in range(0, len(fit), self.batch_size):
            batch = fit[start : start + self.batch_size]
            for i, completions in zip(batch, self._generate_batch([prompt_ids[i] for i in batch], params), strict=True):
                results[i] = completions
            if progress is not None:
                progress(len(batch))
        count_finishes(results, self.stats)
        return results

    def _generate_batch(self, prompt_ids: list[list[int]], params: GenParams) -> list[list[Completion]]:
        import torch

        enc = self.tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt").to(self.model.device)
        per_prompt = samples_per_request(params)
        sampling = (
            {"do_sample": False}
            if params.greedy
            else {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": max(params.top_k, 0),  # 0 = no top-k filter in transformers too
            }
        )
        stop = {"stop_strings": params.stop, "tokenizer": self.tokenizer} if params.stop else {}
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=params.max_tokens,
                num_return_sequences=per_prompt,
                repetition_penalty=params.repetition_penalty,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                **sampling,
                **stop,
            )
        generated = out[:, enc["input_ids"].shape[1] :].tolist()
        completions = [self._completion(ids, params.stop) for ids in generated]
        return [
            repeat_greedy(completions[k * per_prompt : (k + 1) * per_prompt], params) for k in range(len(prompt_ids))
        ]

    def _completion(self, ids: list[int], stop: list[str]) -> Completion:
        """One generated row cut at its first EOS (counted in num_tokens, not in the text) or stop string."""
        eos = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        body = ids[:eos] if eos is not None else ids
        # vLLM's incremental detokenizer never emits a trailing incomplete UTF-8 sequence
        # (a byte-level token cut mid-character); drop its replacement chars the same way.
        text = self.tokenizer.decode(body, skip_special_tokens=True).rstrip("\ufffd")
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            return Completion(text[:cut], "stop", self._tokens_until_stop(body, stop))
        if eos is not None:
            return Completion(text, "stop", eos + 1)
        return Completion(text, "length", len(body))

    def _tokens_until_stop(self, ids: list[int], stop: list[str]) -> int:
        """How many tokens were generated when a stop string first appeared (the rest is padding).

        Padding cannot be told from a generated pad token by id, so search the shortest
        prefix whose text holds a stop string (containment only grows with the prefix).
        """
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self.tokenizer.decode(ids[:mid], skip_special_tokens=True)
            if any(s in text for s in stop):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def close(self) -> None:
        """Drop the model so its memory can be reused."""
        import gc

        self.model = None
        gc.collect()
