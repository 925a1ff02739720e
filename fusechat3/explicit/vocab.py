"""Vocabulary mapping: the target id a source token id stands for, for the source's top-k ids.

Three ways, as in the papers, each sparse and vectorised (a 128k x 152k vocabulary pair never
becomes a dense matrix, and no Python loop runs over V_source x V_target):

- **exact** (tried first): the same text after undoing each tokenizer's markers (`tokens.piece_bytes`: `Ġ`,
  `▁`, `<0x..>`). A dictionary from the target's piece bytes to its id.
- **MinED** (FuseLLM): the target piece of least edit distance to the source piece. Only the
  source ids that need it (no exact or statistics match) are searched, each with rapidfuzz's C++ scan over the
  target vocabulary (`process.extractOne`), never a Python V x V loop.
- **statistics** (FuseChat): over the corpus, how often each source token is aligned with each
  target token (`CoAlignment`, counted from one-to-one groups and from the last piece of a
  many-to-one group, the distribution FuseChat-2.0 keeps). A source id without an exact match
  maps to the target id of least cost among those it was aligned with:

      cost(s -> t) = (1 + ed(s, t)) x (0.1 if one text contains the other, else 1) / count(s, t)

  so a frequent co-alignment *lowers* the cost (FuseChat's code multiplies the edit distance by
  sigmoid(count), which grows with the count: there a frequent pair costs more; docs/explicit.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusechat3.explicit.tokens import bytes_text, is_byte_level, piece_bytes


def vocab_bytes(tok) -> list[bytes]:
    """`tokens.piece_bytes` of every id of `tok`, in id order."""
    byte_level = is_byte_level(tok)
    return [piece_bytes(p or "", byte_level) for p in tok.convert_ids_to_tokens(list(range(len(tok))))]


def exact_map(source: list[bytes], target: list[bytes]) -> np.ndarray:
    """Per source id, the target id of the same text, or -1. Where several target ids share a
    text (added tokens duplicating a piece), the lowest id."""
    index: dict[bytes, int] = {}
    for i, b in enumerate(target):
        index.setdefault(b, i)
    return np.fromiter((index.get(b, -1) for b in source), np.int64, len(source))


def mined_map(source: list[bytes], target: list[bytes], ids) -> np.ndarray:
    """For the source ids `ids`, the target id of least edit distance between the pieces' texts
    (ties: the lowest id)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    choices = [bytes_text(b) for b in target]
    out = np.full(len(ids), -1, dtype=np.int64)
    for k, s in enumerate(ids):
        best = process.extractOne(bytes_text(source[int(s)]), choices, scorer=Levenshtein.distance)
        out[k] = best[2]
    return out


@dataclass
class CoAlignment:
    """Sparse counts of (source id, target id) alignments: sorted keys `source * v_target + target`
    and their counts, 16 bytes per distinct pair seen. New pairs wait in a buffer and are merged
    in (one sort) when it grows past `flush_at` or when the counts are read."""

    v_source: int
    v_target: int
    keys: np.ndarray  # int64, sorted, unique
    counts: np.ndarray  # int64
    flush_at: int = 1 << 20

    def __post_init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    @classmethod
    def empty(cls, v_source: int, v_target: int) -> CoAlignment:
        return cls(v_source, v_target, np.zeros(0, np.int64), np.zeros(0, np.int64))

    def add(self, source_ids, target_ids) -> None:
        """Count one alignment of each (source_ids[k], target_ids[k])."""
        keys = np.asarray(source_ids, np.int64) * self.v_target + np.asarray(target_ids, np.int64)
        self._pending.append(keys)
        self._pending_n += len(keys)
        if self._pending_n >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        new, new_counts = np.unique(np.concatenate(self._pending), return_counts=True)
        self._pending, self._pending_n = [], 0
        keys, inverse = np.unique(np.concatenate([self.keys, new]), return_inverse=True)
        self.counts = np.bincount(inverse, weights=np.concatenate([self.counts, new_counts]), minlength=len(keys))
        self.counts = self.counts.astype(np.int64)
        self.keys = keys

    def add_alignment(self, source_ids, target_ids, groups: np.ndarray) -> None:
        """Count the pairs of one aligned text: each one-to-one group, and the last source piece of
        each many-to-one group with its target token."""
        g = np.asarray(groups).reshape(-1, 4)
        single_target = g[:, 1] - g[:, 0] == 1
        s = np.asarray(source_ids, np.int64)[g[single_target, 3] - 1]
        t = np.asarray(target_ids, np.int64)[g[single_target, 0]]
        self.add(s, t)

    def nbytes(self) -> int:
        self.flush()
        return self.keys.nbytes + self.counts.nbytes


def statistics_map(co: CoAlignment, source: list[bytes], target: list[bytes]) -> np.ndarray:
    """Per source id, the target id of least `cost` (module docstring) among those it was aligned
    with; -1 for source ids never aligned."""
    from rapidfuzz.distance import Levenshtein

    co.flush()
    s_ids, t_ids = np.divmod(co.keys, co.v_target)
    cost = np.empty(len(co.keys))
    # One edit distance per distinct pair seen (the corpus's pairs, not V_source x V_target).
    for k, (s, t) in enumerate(zip(s_ids.tolist(), t_ids.tolist(), strict=True)):
        a, b = bytes_text(source[s]).strip(), bytes_text(target[t]).strip()
        contains = bool(a and b) and (a in b or b in a)
        cost[k] = (1 + Levenshtein.distance(a, b)) * (0.1 if contains else 1.0)
    cost /= co.counts
    out = np.full(co.v_source, -1, dtype=np.int64)
    # Per source id (keys are sorted by source id), the pair of least cost; ties: the lowest target id.
    order = np.lexsort((t_ids, cost, s_ids))
    first = np.r_[True, s_ids[order][1:] != s_ids[order][:-1]]
    out[s_ids[order][first]] = t_ids[order][first]
    return out


def vocab_map(source_tok, target_tok, co: CoAlignment | None = None, counts: dict | None = None) -> np.ndarray:
    """Source id -> target id for the whole source vocabulary: exact where the same text exists,
    else statistics where `co` has counts, else MinED (searched for the ids left only). `counts`, if
    given, gets how many source ids each way mapped ("exact", "statistics", "mined")."""
    source, target = vocab_bytes(source_tok), vocab_bytes(target_tok)
    out = exact_map(source, target)
    exact = int((out >= 0).sum())
    if co is not None:
        stats = statistics_map(co, source, target)
        out = np.where(out < 0, stats, out)
    left = np.flatnonzero(out < 0)
    if len(left):
        out[left] = mined_map(source, target, left)
    if counts is not None:
        counts.update(exact=exact, statistics=len(out) - exact - len(left), mined=len(left))
    return out
