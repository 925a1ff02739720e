"""Representations (fusechat3/explicit/represent.py) on a toy model: what is stored, and that batching
changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from fusechat3.explicit.represent import encode, render, represent
from fusechat3.recipe import resolve_model
from fusechat3.toyworld import tasks as T


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("toyworld:qwen2-code")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _conversations(n: int) -> list[list[dict]]:
    tasks = [t for d in T.FAMILIES for t in T.split_tasks(d, n, "fusion")]
    return [[{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.response}] for t in tasks]


def test_label_mask_is_the_assistant_content(toy):
    _, tok = toy
    conv = _conversations(1)[0]
    e = encode(tok, conv)
    labelled = e["ids"][e["mask"]].tolist()
    assert tok.decode(labelled[:-1]).strip() == conv[1]["content"].strip()
    assert labelled[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # the end of the turn is learnt too
    text, spans = render(tok, conv)
    assert text[spans[0][0] : spans[0][1]] == conv[1]["content"]
    import copy

    shouting = copy.deepcopy(tok)
    shouting.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(ValueError, match="verbatim"):
        render(shouting, conv)


def test_top_k_and_cross_entropy_match_an_unbatched_forward(toy):
    import torch

    model, tok = toy
    convs = _conversations(3)
    reps = represent(model, tok, convs, k=5, batch_size=4)
    assert len(reps) == len(convs)
    for r in reps:
        assert r["top_ids"].dtype == np.int32 and r["top_logprobs"].dtype == np.float16 and r["ce"].dtype == np.float32
        assert r["top_ids"].shape == (len(r["ids"]), 5)
        ids = torch.tensor(r["ids"], dtype=torch.long)[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits.float()[0], -1)
        # float16 storage: about 3 significant digits.
        np.testing.assert_allclose(
            r["top_logprobs"].astype(np.float32), logp.topk(5).values.numpy(), rtol=1e-3, atol=1e-3
        )
        assert (r["top_ids"][:, 0] == logp.argmax(-1).numpy()).all()
        # CE: the mean NLL of the assistant tokens, as transformers' own loss with the prompt masked.
        labels = ids.clone()
        labels[0, ~torch.from_numpy(r["mask"])] = -100
        with torch.no_grad():
            want = model(input_ids=ids, labels=labels).loss.item()
        assert r["ce"] == pytest.approx(want, rel=1e-4)


def test_vllm_prompt_logprobs_give_the_same_rows(toy):
    """The vLLM backend (prompt_logprobs) against the transformers one, on the same model and texts."""
    from fusechat3.explicit.represent_vllm import open_engine, represent_vllm
    from fusechat3.vllm_engine import close_llm

    model, tok = toy
    convs = _conversations(2)
    hf = represent(model, tok, convs, k=5)

    import types

    holder = types.SimpleNamespace(llm=open_engine(resolve_model("toyworld:qwen2-code"), max_model_len=512))
    try:
        vl = represent_vllm(holder.llm, tok, convs, k=5)
    finally:
        close_llm(holder)
    for a, b in zip(hf, vl, strict=True):
        assert (a["ids"] == b["ids"]).all() and (a["mask"] == b["mask"]).all()
        assert (a["top_ids"] == b["top_ids"]).mean() > 0.99  # float32 both; a near-tie may swap two ids
        np.testing.assert_allclose(
            b["top_logprobs"].astype(np.float32), a["top_logprobs"].astype(np.float32), atol=1e-3
        )
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-4, abs=1e-6)
