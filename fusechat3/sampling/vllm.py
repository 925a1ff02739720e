"""The "vllm" sampling backend (the default): an in-process offline `vllm.LLM`.

Each model is prompted with its own chat template, or the recipe's template file
(rendered here, passed to vLLM as token ids, so that the prompt-length check and the
prompt the model sees agree).

Seeding: every request carries its own seed (`SamplingParams(seed=...)`), derived by
the caller from the source's `sampling.seed` and the prompt_id (not the recipe's `seed`), so a prompt's samples do not depend
on the batch it is in, on the shard split, or on what the engine did before: a resumed
run samples exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from fusechat3.sampling.base import (
    Completion,
    GenParams,
    count_finishes,
    plan_requests,
    register,
    repeat_greedy,
    samples_per_request,
)
from fusechat3.vllm_engine import CPU_DEFAULTS, close_llm, open_llm

logger = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length"}  # anything else ("abort", None) is an error


# No chunked prefill: vLLM rewinds a seeded request's generator when it samples for a
# partly prefilled prompt, and CPU generators cannot rewind ("CPU Generator does not
# use offset"); every request here carries a seed.
_CPU_DEFAULTS = {**CPU_DEFAULTS, "enable_chunked_prefill": False}


def _sampling_params(params: GenParams, seed: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=samples_per_request(params),
        seed=None if params.greedy else seed,
        temperature=params.temperature,
        # Greedy ignores the filters; vLLM wants them neutral then.
        top_p=1.0 if params.greedy else params.top_p,
        top_k=0 if params.greedy or params.top_k <= 0 else params.top_k,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        max_tokens=params.max_tokens,
        stop=params.stop or None,
    )


def _progress_bar(progress: Callable[[int], None] | None) -> Any:
    """vLLM's `use_tqdm`: no bar of its own (the stage shows one per source), but each
    finished request (vLLM calls `update` once per prompt) is passed to `progress`."""
    if progress is None:
        return False
    from tqdm.auto import tqdm

    class _Forward(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            progress(1)
            return super().update(n)

    class _Nowhere:  # a live tqdm (vLLM reads its elapsed time) that prints nothing
        def write(self, _: str) -> None:
            pass

        def flush(self) -> None:
            pass

    def make(*iterable: Any, **kw: Any) -> tqdm:
        # vLLM also wraps its prompt-rendering loop (an iterable) in a bar: not forwarded.
        return (tqdm if iterable else _Forward)(*iterable, file=_Nowhere(), **kw)

    return make


@register("vllm")
class VllmSampler:
    """`get_sampler("vllm", model, chat_template=None, **engine_kwargs)`; engine_kwargs go to `vllm.LLM(...)`."""

    def __init__(self, model: str, chat_template: str | None = None, **engine_kwargs: Any) -> None:
        self.model = model
        self.chat_template = chat_template
        self.stats: Counter = Counter()
        self.seed: int = engine_kwargs.pop("seed", 0)
        self.llm: Any = open_llm(
            model, cpu_defaults=_CPU_DEFAULTS, where="sampler.engine", seed=self.seed, **engine_kwargs
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len: int = self.llm.llm_engine.model_config.max_model_len

    def generate(
        self,
        conversations: list[list[dict]],
        params: GenParams,
        seeds: list[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        if self.llm is None:
            raise RuntimeError(f"vllm sampler for {self.model} was closed; create a new one with get_sampler")
        plan = plan_requests(self, conversations, params, seeds, progress)
        fit, prompt_ids, seeds, results = plan.fit, plan.prompt_ids, plan.seeds, plan.results
        if fit:
            outputs = self.llm.generate(
                [{"prompt_token_ids": prompt_ids[i]} for i in fit],
                [_sampling_params(params, seeds[i]) for i in fit],
                use_tqdm=_progress_bar(progress),
            )
            for i, out in zip(fit, outputs, strict=True):
                completions = [
                    Completion(
                        text=o.text,
                        finish_reason=_FINISH.get(o.finish_reason, "error"),
                        num_tokens=len(o.token_ids),
                        error=None if o.finish_reason in _FINISH else f"vllm finish_reason {o.finish_reason!r}",
                    )
                    for o in sorted(out.outputs, key=lambda o: o.index)
                ]
                results[i] = repeat_greedy(completions, params)
        count_finishes(results, self.stats)
        return results

    def close(self) -> None:
        """Free the engine so that another one can be created in this process."""
        self.tokenizer = None
        close_llm(self)
