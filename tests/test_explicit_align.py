"""Token alignment (fusechat3/explicit/align.py) and token pieces as text (fusechat3/explicit/tokens.py)."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest

from fusechat3.explicit.align import Alignment, align, align_mined, align_offsets, mined_path, path_groups
from fusechat3.explicit.tokens import piece_bytes, piece_text, spans_from_pieces
from fusechat3.recipe import resolve_model
from fusechat3.toyworld import tasks as T

TOY = ["target", "mistral-math", "qwen2-code", "gpt2-chat"]
HARD_TEXTS = [
    "hello  wörld 汉字 🙂\n\nthe  end",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows lines, naïve café, Ωμέγα",
    "emoji 👩‍👩‍👧 family and 🇫🇷 flag, 数学 答案是 \\boxed{42}.",
    "code:\n```python\ndef f(xs):\n    return sum(xs)\n```",
]


@pytest.fixture(scope="module")
def toy_tokenizers():
    from transformers import AutoTokenizer

    return {n: AutoTokenizer.from_pretrained(resolve_model(f"toyworld:{n}")) for n in TOY}


@pytest.fixture(scope="module")
def sentencepiece_like():
    """A SentencePiece-style tokenizer (`▁` for spaces, byte fallback for what it does not know),
    trained on ASCII only so that accents, CJK and emoji come out as `<0x..>` pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    corpus = [t.prompt + " " + t.response for d in T.FAMILIES for t in T.split_tasks(d, 200, "pretrain")]
    special = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=special))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _check_cover(al: Alignment, t_spans, s_spans, n: int, m: int, text: str) -> None:
    """Groups run in order over every token of both sides, and each group's two runs cover the same
    characters (whitespace at the edges aside)."""
    g = al.groups
    assert g[0, 0] == 0 and g[0, 2] == 0 and g[-1, 1] == n and g[-1, 3] == m
    assert np.all(g[1:, 0] == g[:-1, 1]) and np.all(g[1:, 2] == g[:-1, 3])
    assert np.all(g[:, 1] > g[:, 0]) and np.all(g[:, 3] > g[:, 2])
    for t0, t1, s0, s1 in g.tolist():
        a = text[t_spans[t0:t1, 0].min() : t_spans[t0:t1, 1].max()].strip()
        b = text[s_spans[s0:s1, 0].min() : s_spans[s0:s1, 1].max()].strip()
        assert a == b, (a, b)


def _spans(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return np.asarray(enc["offset_mapping"]).reshape(-1, 2)


def _texts(toy_tokenizers, k: int = 40) -> list[str]:
    rng = random.Random(0)
    tasks = [t for d in T.FAMILIES for t in T.split_tasks(d, k, "fusion")]
    return [t.prompt + "\n" + t.response for t in rng.sample(tasks, k)] + HARD_TEXTS


@pytest.mark.parametrize("source", TOY[1:])
def test_offsets_alignment_covers_the_same_characters_on_the_toy_tokenizers(toy_tokenizers, source):
    target = toy_tokenizers["target"]
    for text in _texts(toy_tokenizers):
        t_ids, s_ids, al = align(target, toy_tokenizers[source], text)
        assert al.method == "offsets", text
        _check_cover(al, _spans(target, text), _spans(toy_tokenizers[source], text), len(t_ids), len(s_ids), text)


def test_offsets_alignment_with_byte_fallback_cjk_emoji_and_whitespace(toy_tokenizers, sentencepiece_like):
    target = toy_tokenizers["target"]
    kinds = set()
    for text in HARD_TEXTS:
        for a, b in ((target, sentencepiece_like), (sentencepiece_like, target)):
            t_ids, s_ids, al = align(a, b, text)
            assert al.method == "offsets"
            _check_cover(al, _spans(a, text), _spans(b, text), len(t_ids), len(s_ids), text)
            kinds |= set(al.kinds().tolist())
    assert {0, 1, 2} <= kinds  # one-to-one, many pieces to one token, and one to many all occur
    # The byte pieces of one character never end a group inside the character.
    ids = sentencepiece_like("🙂 x", add_special_tokens=False)["input_ids"]
    pieces = sentencepiece_like.convert_ids_to_tokens(ids)
    assert pieces.count("<0xF0>") == 1 and piece_bytes("<0xF0>", False) == b"\xf0"


def test_spans_rebuilt_from_pieces_match_the_tokenizers_offsets(toy_tokenizers, sentencepiece_like):
    """Without offsets (slow tokenizers) the spans come from the pieces' bytes: the same groups."""
    for tok in (toy_tokenizers["qwen2-code"], sentencepiece_like):
        from fusechat3.explicit.tokens import is_byte_level

        for text in HARD_TEXTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            pieces = [piece_bytes(p, is_byte_level(tok)) for p in tok.convert_ids_to_tokens(ids)]
            rebuilt = spans_from_pieces(pieces, text)
            assert rebuilt is not None, text
            # Same boundaries as the tokenizer's own offsets (which may trim a leading space).
            ref = _spans(tok, text)
            assert np.array_equal(rebuilt[:, 1], ref[:, 1]), text
    for text in HARD_TEXTS:
        with_offsets = align(toy_tokenizers["target"], sentencepiece_like, text)[2]
        without = align(toy_tokenizers["target"], sentencepiece_like, text, use_offsets=False)[2]
        assert np.array_equal(with_offsets.groups, without.groups)
    assert spans_from_pieces([b"ab", b"c"], "abd") is None  # pieces that do not spell the text


def test_piece_text_undoes_each_tokenizers_markers():
    assert piece_text("Ġthe", True) == " the" and piece_text("Ċ", True) == "\n"
    assert piece_text("▁the", False) == " the" and piece_text("<0x0A>", False) == "\n"
    assert piece_text("æ±", True) == "\xe6\xb1"  # two bytes of a three-byte character: kept as bytes
    assert piece_text("æ±ī", True) == "汉"
    assert piece_text("<|eot_id|>", True) == "<|eot_id|>"


def test_offsets_that_do_not_cover_the_text_are_refused():
    text = "ab cd"
    assert align_offsets([[0, 2], [3, 5]], [[0, 2], [3, 5]], text) is not None
    assert align_offsets([[0, 2], [4, 5]], [[0, 2], [3, 5]], text) is None  # "c" is covered by no token
    assert align_offsets([[0, 2], [3, 4]], [[0, 2], [3, 5]], text) is None  # ends differ
    assert align_offsets([[3, 5], [0, 2]], [[0, 2], [3, 5]], text) is None  # out of order


@functools.cache
def _benchmark():
    """benchmarks/alignment_speed.py, whose naive side is the reference the tests compare with."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "alignment_speed.py"
    spec = importlib.util.spec_from_file_location("alignment_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dp_reference(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """The MinED programme as the papers describe it, full grid in pure Python (the benchmark's naive side)."""
    return _benchmark().naive_mined(a, b)


def test_mined_path_equals_the_full_pure_python_programme(toy_tokenizers):
    """Banded and vectorised, the same path as the full grid, ties included."""
    from fusechat3.explicit.tokens import is_byte_level

    rng = random.Random(1)
    words = [*T.WORDS, "汉字", "🙂", "  ", "\n"]
    for trial in range(30):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        sides = []
        for name in ("target", TOY[1 + trial % 3]):
            tok = toy_tokenizers[name]
            ids = tok(text, add_special_tokens=False)["input_ids"]
            sides.append([piece_text(p, is_byte_level(tok)) for p in tok.convert_ids_to_tokens(ids)])
        assert mined_path(*sides) == _dp_reference(*sides), text
    assert mined_path(["a", "a"], ["a", "a", "a"]) == _dp_reference(["a", "a"], ["a", "a", "a"])  # ties


def test_mined_and_offsets_agree_where_both_apply(toy_tokenizers):
    """Property over random texts: where the offsets give a one-to-one group of identical pieces
    between identical neighbours, the MinED programme gives the same group."""
    from fusechat3.explicit.tokens import is_byte_level

    rng = random.Random(2)
    checked = 0
    for trial in range(60):
        text = " ".join(rng.choice(T.WORDS) for _ in range(rng.randint(3, 30)))
        target, source = toy_tokenizers["target"], toy_tokenizers[TOY[1 + trial % 3]]
        t_ids, s_ids, by_offsets = align(target, source, text)
        tp = [piece_text(p, is_byte_level(target)) for p in target.convert_ids_to_tokens(t_ids)]
        sp = [piece_text(p, is_byte_level(source)) for p in source.convert_ids_to_tokens(s_ids)]
        mined = {tuple(g) for g in align_mined(tp, sp).groups.tolist()}
        g = by_offsets.groups.tolist()
        same = [k == 0 and tp[t0] == sp[s0] for t0, t1, s0, s1 in g for k in [(t1 - t0 - 1) + (s1 - s0 - 1)]]
        for k in range(1, len(g) - 1):
            if same[k - 1] and same[k] and same[k + 1]:
                assert tuple(g[k]) in mined, (text, g[k])
                checked += 1
    assert checked > 100


def test_path_groups():
    path = [(0, 0), (1, 1), (1, 2), (1, 3), (2, 4), (3, 4), (4, 5)]
    assert path_groups(path).tolist() == [[0, 1, 0, 1], [1, 2, 1, 4], [2, 4, 4, 5], [4, 5, 5, 6]]
    al = Alignment(path_groups(path), "mined")
    assert al.kinds().tolist() == [0, 1, 2, 0] and al.one_to_one() == {0: 0, 4: 5}
    with pytest.raises(ValueError, match="empty"):
        align_mined([], ["a"])
