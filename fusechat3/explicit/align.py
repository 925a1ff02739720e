"""Token alignment: which target tokens and which source tokens cover the same characters of a text.

An alignment is a list of groups, each a run of consecutive target tokens `[t0, t1)` and a run of
consecutive source tokens `[s0, s1)` that stand for the same stretch of text. A group is one-to-one
(both runs one token long), many-to-one (several source pieces make one target token: FuseChat-2.0
keeps the last piece's distribution), one-to-many or many-to-many (a one-hot target on the next
token).

Two ways to find the groups, the first one tried first:

- **Offsets** (`align_offsets`): fast tokenizers report each token's character span. A token
  boundary is a character position where a token ends and the next one does not overlap it (the
  byte pieces of one character overlap, so no boundary falls inside a character). A token that
  ends in whitespace has its boundary moved to before it (tokenizers disagree on whether a space
  ends one token or starts the next), unless it is whitespace only. A group closes wherever both sides have a boundary: one
  linear pass over both token lists, exact by construction.
- **MinED** (`align_mined`), for tokenizers without offsets or texts whose offsets disagree: the
  dynamic programme of the FuseLLM and FuseChat papers, a monotone path through the target x
  source grid (steps right, down or diagonal) of least total cost, the cost of a cell the edit
  distance between the two pieces' texts (whitespace stripped). Written here because no library
  aligns two tokenizations; it is vectorised per row (a min-plus prefix scan with numpy), and only
  cells whose pieces lie within `band` bytes of text of each other are computed. The band doubles
  until two bands in a row give the same path, so the work is about linear in the text's length.
  Tests and `benchmarks/alignment_speed.py` check the path against the full grid's.
  Ties are broken the same way everywhere: diagonal, then from above, then from the left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_FAR = np.int64(1) << 40  # the cost of a cell outside the band
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Alignment:
    """`groups`: int64 [G, 4] rows (t0, t1, s0, s1), in text order, covering every token of both sides."""

    groups: np.ndarray
    method: str  # "offsets" | "mined"

    def __len__(self) -> int:
        return len(self.groups)

    def kinds(self) -> np.ndarray:
        """Per group: 0 one-to-one, 1 many source pieces to one target token, 2 one-to-many, 3 many-to-many."""
        t = self.groups[:, 1] - self.groups[:, 0]
        s = self.groups[:, 3] - self.groups[:, 2]
        return np.where((t == 1) & (s == 1), 0, np.where(t == 1, 1, np.where(s == 1, 2, 3)))

    def one_to_one(self) -> dict[int, int]:
        """Target token -> source token, for the one-to-one groups."""
        g = self.groups[self.kinds() == 0]
        return dict(zip(g[:, 0].tolist(), g[:, 2].tolist(), strict=True))


# ---------------------------------------------------------------- offsets


def _whitespace_runs(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of whitespace in `text`."""
    arr = np.fromiter((k for m in _SPACES.finditer(text) for k in m.span()), np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def boundaries(spans: np.ndarray, text: str, runs=None) -> np.ndarray:
    """Per token, the character position where it ends as a boundary (see the module docstring),
    or -1 where the next token overlaps it. `runs`: `text`'s whitespace runs, if already found."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    start, end = spans[:, 0], spans[:, 1]
    out = end.copy()
    if len(spans) > 1:
        out[:-1][start[1:] < end[:-1]] = -1
    run_start, run_end = runs or _whitespace_runs(text)
    if len(run_start):
        # The whitespace run that ends at or contains each token's end, if any.
        k = np.searchsorted(run_start, end, side="left") - 1
        has = k >= 0
        k = np.maximum(k, 0)
        in_run = has & (end > run_start[k]) & (end <= run_end[k])
        only_space = in_run & (start >= run_start[k]) & (start < end)  # a whitespace-only token keeps its end
        move = in_run & ~only_space & (out >= 0)
        out[move] = np.maximum(run_start[k][move], start[move])
    return out


def _covers(spans: np.ndarray, text: str, runs) -> bool:
    """Whether the spans run left to right and cover every character of `text` but whitespace."""
    if np.any(np.diff(spans[:, 0]) < 0) or np.any(spans[:, 1] < spans[:, 0]) or spans.max() > len(text):
        return False
    depth = np.zeros(len(text) + 1, dtype=np.int64)
    np.add.at(depth, spans[:, 0], 1)
    np.add.at(depth, spans[:, 1], -1)
    run_start, run_end = runs
    np.add.at(depth, run_start, 1)
    np.add.at(depth, run_end, -1)
    return bool(np.all(np.cumsum(depth)[:-1] > 0))


def align_offsets(target_spans, source_spans, text: str) -> Alignment | None:
    """Groups from the two sides' character spans on the same `text`; None where the spans do not
    cover the same characters (the caller then uses `align_mined`). Vectorised: a group closes at
    every boundary the two sides share, after the first token of each side that reaches it."""
    t_spans = np.asarray(target_spans, dtype=np.int64).reshape(-1, 2)
    s_spans = np.asarray(source_spans, dtype=np.int64).reshape(-1, 2)
    runs = _whitespace_runs(text)
    if not len(t_spans) or not len(s_spans) or not (_covers(t_spans, text, runs) and _covers(s_spans, text, runs)):
        return None
    bt, bs = boundaries(t_spans, text, runs), boundaries(s_spans, text, runs)
    if bt[-1] != bs[-1]:
        return None
    common = np.intersect1d(bt[bt > 0], bs[bs > 0])
    if not len(common):
        return None
    t_end = np.searchsorted(np.maximum.accumulate(bt), common, side="left") + 1
    s_end = np.searchsorted(np.maximum.accumulate(bs), common, side="left") + 1
    t_end[-1], s_end[-1] = len(bt), len(bs)  # what follows the last shared boundary (whitespace) joins the last group
    groups = np.stack([np.r_[0, t_end[:-1]], t_end, np.r_[0, s_end[:-1]], s_end], axis=1)
    return Alignment(groups, "offsets")


# ---------------------------------------------------------------- MinED


def _starts(pieces: list[str], sizes) -> np.ndarray:
    sizes = [len(p.encode()) for p in pieces] if sizes is None else sizes
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _row_range(t_pos: np.ndarray, s_pos: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Per target piece, the source pieces [lo, hi) whose characters lie within `band` of its own."""
    lo = np.searchsorted(s_pos[1:], t_pos[:-1] - band, side="right")
    hi = np.searchsorted(s_pos[:-1], t_pos[1:] + band, side="left")
    lo = np.minimum(lo, len(s_pos) - 2)
    hi = np.maximum(hi, lo + 1)
    lo[0], hi[-1] = 0, len(s_pos) - 1  # the path starts at (0, 0) and ends at (n-1, m-1)
    return np.minimum.accumulate(lo[::-1])[::-1], np.maximum.accumulate(hi)


def _costs(target: list[str], source: list[str], lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    from rapidfuzz.distance import Levenshtein

    src = [p.strip() for p in source]
    return [
        np.fromiter((Levenshtein.distance(a, src[j]) for j in range(lo[i], hi[i])), np.int64, hi[i] - lo[i])
        for i, a in enumerate(p.strip() for p in target)
    ]


def _scan(costs: list[np.ndarray], lo: np.ndarray, hi: np.ndarray, m: int) -> list[np.ndarray]:
    """Cumulative costs D of the banded grid, one array per row (columns lo[i]..hi[i]-1)."""
    rows: list[np.ndarray] = []
    prev = np.full(m + 1, _FAR, dtype=np.int64)  # row i-1 over all columns, shifted by one (prev[j+1] = D[i-1, j])
    prev[0] = 0  # the virtual start
    for i, c in enumerate(costs):
        a, b = lo[i], hi[i]
        best_above = np.minimum(prev[a + 1 : b + 1], prev[a:b])  # from above, or diagonally
        if i == 0:
            best_above = np.full(b - a, _FAR, dtype=np.int64)
            best_above[0] = 0
        start = c + best_above
        # D[j] = min(start[j], c[j] + D[j-1]) = P[j] + min_{k<=j} (start[k] - P[k]), P the prefix sums of c.
        p = np.cumsum(c)
        d = p + np.minimum.accumulate(start - p)
        rows.append(np.minimum(d, _FAR))
        prev = np.full(m + 1, _FAR, dtype=np.int64)
        prev[a + 1 : b + 1] = rows[-1]
    return rows


def _path(rows: list[np.ndarray], lo: np.ndarray) -> list[tuple[int, int]]:
    def d(i: int, j: int) -> int:
        k = j - lo[i]
        return int(rows[i][k]) if 0 <= k < len(rows[i]) else int(_FAR)

    i, j = len(rows) - 1, int(lo[-1]) + len(rows[-1]) - 1
    path = [(i, j)]
    while i or j:
        options = [(d(i - 1, j - 1), i - 1, j - 1)] if i and j else []
        options += [(d(i - 1, j), i - 1, j)] if i else []
        options += [(d(i, j - 1), i, j - 1)] if j else []
        _, i, j = min(options, key=lambda o: o[0])  # min keeps the first of equals: diagonal, above, left
        path.append((i, j))
    return path[::-1]


def path_groups(path: list[tuple[int, int]]) -> np.ndarray:
    """Groups of a monotone path: a diagonal step starts a new group, any other step extends it."""
    groups, (i0, j0) = [], path[0]
    for (pi, pj), (i, j) in zip(path, path[1:], strict=False):
        if i > pi and j > pj:
            groups.append((i0, pi + 1, j0, pj + 1))
            i0, j0 = i, j
    groups.append((i0, path[-1][0] + 1, j0, path[-1][1] + 1))
    return np.asarray(groups, dtype=np.int64)


def mined_path(
    target: list[str], source: list[str], band: int = 32, sizes: tuple[list[int], list[int]] | None = None
) -> list[tuple[int, int]]:
    """The least-cost monotone path (see the module docstring) through target x source pieces.
    `band` is in bytes of text; `sizes`, each piece's length in bytes (default: of its text in UTF-8;
    give the real ones where a piece is part of a character)."""
    m = len(source)
    t_pos, s_pos = _starts(target, sizes and sizes[0]), _starts(source, sizes and sizes[1])
    last = None
    while True:
        lo, hi = _row_range(t_pos, s_pos, band)
        path = _path(_scan(_costs(target, source, lo, hi), lo, hi, m), lo)
        full = bool(lo.max() == 0 and hi.min() == m) or band > t_pos[-1] + s_pos[-1]
        if full or path == last:
            return path
        # A path the band changed is not trusted: widen the band until the path stops changing.
        last, band = path, band * 2


def align_mined(target: list[str], source: list[str], band: int = 32, sizes=None) -> Alignment:
    """Groups of the MinED path over the two sides' piece texts (`tokens.piece_text`)."""
    if not target or not source:
        raise ValueError("align_mined: nothing to align (an empty side)")
    return Alignment(path_groups(mined_path(target, source, band, sizes)), "mined")


# ---------------------------------------------------------------- both


def encode_with_spans(tok, text: str) -> tuple[list[int], np.ndarray | None]:
    """Token ids of `text` (no special tokens) and their character spans, None without a fast tokenizer."""
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return tok(text, add_special_tokens=False)["input_ids"], None


def align(target_tok, source_tok, text: str, use_offsets: bool = True) -> tuple[list[int], list[int], Alignment]:
    """Tokenize `text` with both tokenizers and align them: by character spans where both sides have
    them (the tokenizer's offsets, or spans rebuilt from the pieces' bytes where those spell the
    text) and they agree, else by MinED over the pieces' texts. Returns (target ids, source ids,
    alignment). `use_offsets=False` ignores the tokenizers' offsets (as for slow tokenizers)."""
    from fusechat3.explicit.tokens import bytes_text, is_byte_level, piece_bytes, spans_from_pieces

    def pieces(tok, ids):
        byte_level = is_byte_level(tok)
        return [piece_bytes(p, byte_level) for p in tok.convert_ids_to_tokens(ids)]

    (t_ids, t_spans), (s_ids, s_spans) = encode_with_spans(target_tok, text), encode_with_spans(source_tok, text)
    t_pieces = s_pieces = None
    if t_spans is None or not use_offsets:
        t_pieces = pieces(target_tok, t_ids)
        t_spans = spans_from_pieces(t_pieces, text)
    if s_spans is None or not use_offsets:
        s_pieces = pieces(source_tok, s_ids)
        s_spans = spans_from_pieces(s_pieces, text)
    if t_spans is not None and s_spans is not None:
        found = align_offsets(t_spans, s_spans, text)
        if found is not None:
            return t_ids, s_ids, found
    t_pieces = t_pieces or pieces(target_tok, t_ids)
    s_pieces = s_pieces or pieces(source_tok, s_ids)
    sizes = ([len(p) for p in t_pieces], [len(p) for p in s_pieces])
    return t_ids, s_ids, align_mined([bytes_text(p) for p in t_pieces], [bytes_text(p) for p in s_pieces], sizes=sizes)
