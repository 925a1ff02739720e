"""Representations with vLLM (`prompt_logprobs`): the same rows as `represent.represent`, from an
in-process `vllm.LLM` (`vllm_engine.open_llm`), the faster backend on a GPU cluster.

vLLM's `prompt_logprobs[i]` is the distribution that predicts token i, i.e. our row i - 1; the
last row (what follows the text) is the one generated token's `logprobs`. vLLM adds the actual
token to each position's top-k when it is not among them: entries ranked past k are dropped from
the top-k and used for the cross-entropy only. Prefix caching is off: cached prompt tokens get
no prompt log-probs.
"""

from __future__ import annotations

import numpy as np

from fusechat3.explicit.represent import encode


def open_engine(model: str, **engine_kwargs):
    """A vLLM engine for prompt log-probs (`vllm_engine.open_llm` with prefix caching off)."""
    from fusechat3.vllm_engine import open_llm

    # Cached prompt tokens get no prompt log-probs: caching is off whatever the engine options say.
    return open_llm(model, where="represent engine", **{**engine_kwargs, "enable_prefix_caching": False})


def represent_vllm(llm, tok, conversations: list[list[dict]], k: int = 10, plain: bool = False) -> list[dict]:
    """`represent.represent`'s rows, computed by vLLM (`llm`, from `open_engine`)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    encoded = [encode(tok, c, plain) for c in conversations]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, logprobs=k)
    outs = llm.generate([TokensPrompt(prompt_token_ids=e["ids"].tolist()) for e in encoded], params, use_tqdm=False)
    for e, out in zip(encoded, outs, strict=True):
        n = len(e["ids"])
        rows = [*out.prompt_logprobs[1:], out.outputs[0].logprobs[0]]
        top_ids = np.zeros((n, k), dtype=np.int32)
        top_lp = np.zeros((n, k), dtype=np.float32)
        for t, entries in enumerate(rows):
            ranked = sorted(
                (lp.rank, tid, lp.logprob) for tid, lp in entries.items() if lp.rank is not None and lp.rank <= k
            )
            for j, (_, tid, lp) in enumerate(ranked[:k]):
                top_ids[t, j], top_lp[t, j] = tid, lp
        e["top_ids"], e["top_logprobs"] = top_ids, top_lp.astype(np.float16)
        labelled = np.flatnonzero(e["mask"][1:])
        nll = [-out.prompt_logprobs[t + 1][int(e["ids"][t + 1])].logprob for t in labelled]
        e["ce"] = np.float32(np.mean(nll)) if nll else np.float32("nan")
    return encoded
