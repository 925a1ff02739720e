"""Vocabulary mapping (fusechat3/explicit/vocab.py): exact, MinED and statistics, all sparse."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fusechat3.explicit.align import align
from fusechat3.explicit.tokens import bytes_text
from fusechat3.explicit.vocab import CoAlignment, exact_map, mined_map, statistics_map, vocab_bytes, vocab_map
from fusechat3.recipe import resolve_model
from fusechat3.toyworld import tasks as T


@pytest.fixture(scope="module")
def toks():
    from transformers import AutoTokenizer

    return {
        n: AutoTokenizer.from_pretrained(resolve_model(f"toyworld:{n}")) for n in ("target", "qwen2-code", "gpt2-chat")
    }


def _levenshtein(a: str, b: str) -> int:
    """Independent textbook edit distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_exact_map_undoes_the_markers_of_both_tokenizer_families():
    source = [b" the", b"\n", b"\xe6\xb1", b"cat"]  # as byte-level BPE or SentencePiece pieces give them
    target = [b"dog", b" the", b"\n", b"the"]
    assert exact_map(source, target).tolist() == [1, 2, -1, -1]


def test_mined_map_is_the_nearest_target_piece(toks):
    source, target = vocab_bytes(toks["qwen2-code"]), vocab_bytes(toks["target"])
    rng = random.Random(0)
    ids = rng.sample(range(len(source)), 25)
    got = mined_map(source, target, ids)
    for s, t in zip(ids, got.tolist(), strict=True):
        a = bytes_text(source[s])
        best = min(_levenshtein(a, bytes_text(b)) for b in target)
        assert _levenshtein(a, bytes_text(target[t])) == best


def test_co_alignment_counts_are_sparse_and_merge_across_flushes():
    co = CoAlignment.empty(v_source=10, v_target=1000)
    co.flush_at = 3
    co.add([1, 1, 2], [5, 5, 7])  # flushes
    co.add([1], [5])
    co.add([9], [999])
    assert co.nbytes() == 3 * 16
    assert dict(zip(co.keys.tolist(), co.counts.tolist(), strict=True)) == {1005: 3, 2007: 1, 9999: 1}
    # From an alignment: a one-to-one group, two source pieces -> one target token (the last piece
    # counts), one source piece -> two target tokens (not counted).
    co = CoAlignment.empty(10, 10)
    co.add_alignment(
        source_ids=[4, 5, 6, 7], target_ids=[1, 2, 3, 8], groups=np.array([[0, 1, 0, 1], [1, 2, 1, 3], [2, 4, 3, 4]])
    )
    co.flush()
    assert co.keys.tolist() == [4 * 10 + 1, 6 * 10 + 2]


def test_statistics_map_frequent_co_alignment_lowers_the_cost():
    source = [b"abc", b"zz", b"q"]
    target = [b"ab", b"abd", b"xyz", b"q2"]
    co = CoAlignment.empty(3, 4)
    co.add([0] * 10 + [0], [0] * 10 + [1])  # "abc" <- "ab" ten times, "abd" once
    co.add([1] * 5 + [1] * 50, [1] * 5 + [2] * 50)  # "zz" <- "abd" 5 times, "xyz" 50 times
    got = statistics_map(co, source, target)
    # cost = (1 + ed) x (0.1 if one contains the other) / count, by hand:
    # abc: ab (1+1)*0.1/10 = 0.02, abd (1+1)/1 = 2 -> ab; zz: abd (1+3)/5 = 0.8, xyz (1+3)/50 = 0.08 -> xyz
    assert got.tolist() == [0, 2, -1]
    # With a count of one each, the closer text wins.
    co = CoAlignment.empty(3, 4)
    co.add([0, 0], [2, 1])
    assert statistics_map(co, source, target).tolist()[0] == 1


def test_vocab_map_covers_every_source_id_and_keeps_exact_matches(toks):
    source, target = toks["gpt2-chat"], toks["target"]
    co = CoAlignment.empty(len(source), len(target))
    for t in T.split_tasks("instruction", 30, "fusion") + T.split_tasks("math", 30, "fusion"):
        t_ids, s_ids, al = align(target, source, t.prompt + "\n" + t.response)
        co.add_alignment(s_ids, t_ids, al.groups)
    mapping = vocab_map(source, target, co)
    assert mapping.shape == (len(source),) and mapping.min() >= 0 and mapping.max() < len(target)
    exact = exact_map(vocab_bytes(source), vocab_bytes(target))
    assert np.array_equal(mapping[exact >= 0], exact[exact >= 0]) and (exact >= 0).sum() > 100
