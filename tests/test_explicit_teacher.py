"""The fused teacher of a conversation across the toy world's tokenizers (fusechat3/explicit/teacher.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fusechat3.explicit.represent import represent
from fusechat3.explicit.teacher import piece_texts, teacher, turn_groups
from fusechat3.explicit.vocab import vocab_map
from fusechat3.recipe import resolve_model
from fusechat3.toyworld import tasks as T


@pytest.fixture(scope="module")
def world():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for name in ("target", "qwen2-code"):
        path = resolve_model(f"toyworld:{name}")
        out[name] = (AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
    return out


def _conversation() -> list[dict]:
    t = T.split_tasks("code", 1, "fusion")[0]
    return [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.response}]


def test_the_target_alone_is_its_own_teacher(world):
    model, tok = world["target"]
    rep = represent(model, tok, [_conversation()], k=5)[0]
    got = teacher(rep, [rep], [np.arange(len(tok))], "minCE", k=5)
    # Every position that predicts a label: the target's own top-5, renormalised.
    positions = np.flatnonzero(rep["mask"][1:])
    want = np.exp(rep["top_logprobs"][positions].astype(np.float64))
    want /= want.sum(1, keepdims=True)
    assert (got.ids[positions] == rep["top_ids"][positions]).all()
    np.testing.assert_allclose(got.probs[positions], want, atol=1e-5)


def test_a_source_with_another_tokenizer_and_template(world):
    (tm, tt), (sm, st) = world["target"], world["qwen2-code"]
    conv = _conversation()
    t_rep, s_rep = represent(tm, tt, [conv], k=5)[0], represent(sm, st, [conv], k=5)[0]
    groups, ends, end_pos = turn_groups(t_rep, s_rep)
    assert [(int(t_rep["ids"][t]), int(s_rep["ids"][s])) for t, s in end_pos] == [(b, a) for a, b in ends]
    # The end of turn pairs qwen's <|im_end|> with the target's <|eot_id|>.
    assert ends == [(st.convert_tokens_to_ids("<|im_end|>"), tt.convert_tokens_to_ids("<|eot_id|>"))]
    vmap = vocab_map(st, tt)
    got = teacher(t_rep, [s_rep], [vmap], "minCE", k=5)
    # At the last content token the source predicts its end of turn: the teacher says the target's.
    last = int(np.flatnonzero(t_rep["mask"])[-1]) - 1
    assert got.ids[last, 0] == tt.convert_tokens_to_ids("<|eot_id|>") and got.probs[last, 0] > 0.5
    # Where a target token is one source token of the same text, the teacher is the source's distribution.
    one = groups[(groups[:, 1] - groups[:, 0] == 1) & (groups[:, 3] - groups[:, 2] == 1)]
    t0, s0 = int(one[len(one) // 2, 0]), int(one[len(one) // 2, 2])
    mapped = {}
    for i, lp in zip(vmap[s_rep["top_ids"][s0]], s_rep["top_logprobs"][s0].astype(np.float64), strict=True):
        mapped[int(i)] = mapped.get(int(i), 0.0) + np.exp(lp)
    total = sum(mapped.values())
    assert {int(i): round(float(p), 4) for i, p in zip(got.ids[t0], got.probs[t0], strict=True) if i >= 0} == {
        i: round(p / total, 4) for i, p in mapped.items()
    }


def test_a_turn_whose_offsets_fail_is_aligned_by_mined(world):
    """Offsets that do not cover a turn's content (a token with an empty span): MinED over the pieces'
    texts, which must then be given."""
    (tm, tt), (sm, st) = world["target"], world["qwen2-code"]
    conv = _conversation()
    t_rep, s_rep = represent(tm, tt, [conv], k=3)[0], represent(sm, st, [conv], k=3)[0]
    broken = dict(s_rep, spans=s_rep["spans"].copy())
    inside = np.flatnonzero(s_rep["mask"])
    broken["spans"][inside[1]] = broken["spans"][inside[1], 0]  # a content token covering nothing
    with pytest.raises(ValueError, match="piece texts"):
        turn_groups(t_rep, broken)
    groups, _, _ = turn_groups(t_rep, broken, piece_texts(tt, t_rep), piece_texts(st, s_rep))
    content = groups[1:]  # after the pair of tokens before the turn
    assert content[0, 0] == np.flatnonzero(t_rep["mask"])[0] and content[0, 2] == inside[0]
    assert np.all(content[1:, 0] == content[:-1, 1]) and np.all(content[1:, 2] == content[:-1, 3])
