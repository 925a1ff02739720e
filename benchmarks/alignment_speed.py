"""Token alignment: ours against the straightforward MinED dynamic programme, on 2048-token texts.

Two tokenizers of different families are trained here with the `tokenizers` library (nothing is
downloaded): a byte-level BPE (GPT-2 / Llama-3 / Qwen style: `Ġ` for spaces, digits split) and a
SentencePiece-style BPE (`▁` for spaces, byte fallback), both on this repository's own text and
code. Texts of 2048 tokens of the first are aligned with the second three ways, in one process:

- **naive**: the MinED programme as the papers describe it and their code writes it, a full
  n x m grid filled cell by cell in Python (the edit distance itself in C, as the reference code
  uses the C `editdistance` package), then the path traced back;
- **ours, MinED**: `align.mined_path`, the same programme banded and vectorised; its path must be
  identical to the naive one;
- **ours**: `align.align_offsets` on the tokenizers' character offsets (linear), what
  `align.align` uses wherever they cover the text (its time with both tokenizations is printed too).

The naive programme and ours are given the same tokenizations; tokenizing is not timed in them.

Then the memory of the statistics mapping's counts (`vocab.CoAlignment`) for a 128k x 152k
vocabulary pair, synthetic counts at a realistic density, against the dense matrix.

Ours are timed as the fastest of five calls (the naive programme runs once, it takes seconds).
Prints the seconds of each, `ratio <naive / ours>` (target >= 100) and the MinED ratio, and how
many of the offsets' groups the MinED path also finds.

    python benchmarks/alignment_speed.py              # 3 texts, about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> list[str]:
    files = sorted(
        [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.md"), *ROOT.glob("fusechat3/**/*.py")]
    )
    return [f.read_text(encoding="utf-8") for f in files]


def tokenizers(texts: list[str], vocab: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\d"), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    byte_level.decoder = decoders.ByteLevel()
    byte_level.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    sp = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    sp.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=special))
    return PreTrainedTokenizerFast(tokenizer_object=byte_level), PreTrainedTokenizerFast(tokenizer_object=sp)


def naive_mined(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """The papers' programme, cell by cell: D[i][j] = ed(a_i, b_j) + min(D[i-1][j-1], D[i-1][j], D[i][j-1])."""
    from rapidfuzz.distance import Levenshtein

    n, m, inf = len(a), len(b), float("inf")
    a, b = [x.strip() for x in a], [y.strip() for y in b]
    d = [[inf] * m for _ in range(n)]
    for i in range(n):
        row, above = d[i], d[i - 1] if i else None
        for j in range(m):
            c = Levenshtein.distance(a[i], b[j])
            if i == 0:
                row[j] = c + (row[j - 1] if j else 0)
            else:
                best = above[j]
                if j:
                    best = min(above[j - 1], best, row[j - 1])  # ties: diagonal, above, left
                row[j] = c + best
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while i or j:
        options = ([(d[i - 1][j - 1], i - 1, j - 1)] if i and j else []) + ([(d[i - 1][j], i - 1, j)] if i else [])
        options += [(d[i][j - 1], i, j - 1)] if j else []
        _, i, j = min(options, key=lambda o: o[0])
        path.append((i, j))
    return path[::-1]


def _best(fn, repeats: int = 5) -> float:
    """The fastest of `repeats` timed calls (after the one above, which warmed the caches)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from fusechat3.explicit.align import align, align_offsets, encode_with_spans, mined_path, path_groups
    from fusechat3.explicit.tokens import bytes_text, is_byte_level, piece_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()

    texts = corpus()
    t0 = time.time()
    target, source = tokenizers(texts, args.vocab)
    print(
        f"tokenizers: byte-level BPE {len(target)} and SentencePiece-style {len(source)} pieces ({time.time() - t0:.0f} s)"
    )
    long_text = "\n\n".join(texts)
    enc = target(long_text, add_special_tokens=False, return_offsets_mapping=True)
    cut = [enc["offset_mapping"][k * args.tokens][0] for k in range(args.texts + 1)]
    samples = [long_text[cut[k] : cut[k + 1]] for k in range(args.texts)]

    t_naive = t_mined = t_ours = t_whole = 0.0
    same_path = agree = groups = 0
    for text in samples:
        sides = []
        for tok in (target, source):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            pieces = [piece_bytes(p, is_byte_level(tok)) for p in tok.convert_ids_to_tokens(ids)]
            sides.append(([bytes_text(p) for p in pieces], [len(p) for p in pieces]))
        (ta, ts), (sa, ss) = sides
        t = time.perf_counter()
        ref = naive_mined(ta, sa)
        t_naive += time.perf_counter() - t
        path = mined_path(ta, sa, sizes=(ts, ss))
        t_mined += _best(partial(mined_path, ta, sa, sizes=(ts, ss)))
        (_, t_spans), (_, s_spans) = encode_with_spans(target, text), encode_with_spans(source, text)
        al = align_offsets(t_spans, s_spans, text)
        t_ours += _best(partial(align_offsets, t_spans, s_spans, text))
        whole = align(target, source, text)[2]
        t_whole += _best(partial(align, target, source, text))
        assert al is not None and whole.method == "offsets" and (whole.groups == al.groups).all()
        same_path += path == ref
        mined_groups = {tuple(g) for g in path_groups(path).tolist()}
        agree += sum(tuple(g) in mined_groups for g in al.groups.tolist())
        groups += len(al)
        print(
            f"  text of {len(ta)} x {len(sa)} tokens: offsets groups {len(al)} ({al.method}), MinED path identical: {path == ref}"
        )

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.texts} texts")
    print(f"naive MinED (Python grid): {t_naive:.2f} s")
    print(f"ours, MinED (banded, vectorised): {t_mined:.3f} s, identical paths {same_path}/{args.texts}")
    print(
        f"ours (offsets): {t_ours:.4f} s; with both tokenizations and the fallback checks (align.align): {t_whole:.4f} s"
    )
    print(f"groups the offsets and MinED share: {agree}/{groups} ({100 * agree / groups:.1f}%)")
    print(f"MinED ratio {t_naive / t_mined:.0f}")
    print(f"ratio {t_naive / t_ours:.0f}")
    statistics_memory()


def statistics_memory(v_target: int = 128_256, v_source: int = 151_936, partners: float = 3.0) -> None:
    """The statistics mapping's counts for a Llama-3 x Qwen2 vocabulary pair: every source id aligned
    with 1 + Poisson(`partners`) distinct target ids (most pieces align with the same few tokens),
    each pair seen Zipf-many times, against the dense float64 matrix the reference code fills."""
    import numpy as np

    from fusechat3.explicit.vocab import CoAlignment

    rng = np.random.default_rng(0)
    per_source = 1 + rng.poisson(partners, v_source)
    s = np.repeat(np.arange(v_source), per_source)
    t = rng.integers(0, v_target, len(s))
    seen = np.minimum(rng.zipf(1.5, len(s)), 1000)
    co = CoAlignment.empty(v_source, v_target)
    t0 = time.perf_counter()
    co.add(np.repeat(s, seen), np.repeat(t, seen))
    sparse = co.nbytes()
    seconds = time.perf_counter() - t0
    dense = v_target * v_source * 8
    print(
        f"statistics counts, {v_target} x {v_source} vocabularies, {len(co.keys)} distinct pairs from {seen.sum()} "
        f"alignments ({seconds:.1f} s): {sparse / 2**20:.1f} MiB sparse against {dense / 2**30:.1f} GiB dense float64"
    )
    print(f"memory ratio {dense / sparse:.0f}")


if __name__ == "__main__":
    main()
