"""The fused teacher of one conversation: every source's distributions on the target's positions
and ids (`fuse.to_target`), fused by MinCE or AvgCE (`fuse.fuse`).

The target and each source render the conversation with their own chat templates, so only the
assistant turns' contents are the same text on both sides. They are aligned turn by turn
(`align.align_offsets` on the content, MinED where the offsets fail). Two positions around each
turn are paired as well: the last template token before the content on each side (it predicts
the first content token), and the end-of-turn token after it, whose source id is mapped to the
target's own end-of-turn id. A source may be the target itself (FuseChat's pairwise fusion
keeps the pivot's own distribution); it then aligns one-to-one with an identity vocabulary map.
"""

from __future__ import annotations

import numpy as np

from fusechat3.explicit.align import align_mined, align_offsets
from fusechat3.explicit.fuse import Sparse, fuse, to_target
from fusechat3.explicit.represent import inside
from fusechat3.explicit.tokens import bytes_text


def turn_groups(
    target: dict, source: dict, target_texts=None, source_texts=None
) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """Alignment groups between two representations (`represent.encode`) of the same conversation,
    over the assistant turns; the (source id, target id) pairs of their end-of-turn tokens; and those
    tokens' (target position, source position) pairs. `*_texts`: each token's piece text, for the MinED
    fallback."""
    groups, ends, end_pos = [], [], []
    for (ta, tb), (sa, sb) in zip(target["turns"].tolist(), source["turns"].tolist(), strict=True):
        ti = np.flatnonzero(inside(target["spans"], ta, tb))
        si = np.flatnonzero(inside(source["spans"], sa, sb))
        if not len(ti) or not len(si):
            continue
        content = target["text"][ta:tb]
        found = align_offsets(target["spans"][ti] - ta, source["spans"][si] - sa, content)
        if found is None:
            if target_texts is None or source_texts is None:
                raise ValueError("the offsets of a turn do not cover its content: give the piece texts for MinED")
            found = align_mined([target_texts[i] for i in ti], [source_texts[i] for i in si])
        g = found.groups + np.array([ti[0], ti[0], si[0], si[0]])
        if ti[0] > 0 and si[0] > 0:  # the template token before the content predicts its first token
            groups.append(np.array([[ti[0] - 1, ti[0], si[0] - 1, si[0]]]))
        groups.append(g)
        t_end, s_end = ti[-1] + 1, si[-1] + 1
        if t_end < len(target["ids"]) and s_end < len(source["ids"]):
            ends.append((int(source["ids"][s_end]), int(target["ids"][t_end])))
            end_pos.append((int(t_end), int(s_end)))
    out = np.concatenate(groups) if groups else np.zeros((0, 4), np.int64)
    return out, ends, np.asarray(end_pos, dtype=np.int64).reshape(-1, 2)


def teacher(
    target: dict,
    sources: list[dict],
    vocab_maps: list[np.ndarray],
    method: str = "minCE",
    k: int = 10,
    texts: tuple[list[str], list[list[str]]] | None = None,
    split_next: str = "source",
) -> Sparse:
    """The fused next-token distribution at every target position of one conversation. `sources`:
    representations (`represent.represent`, with top-k and CE) of the same conversation; `vocab_maps`:
    each source's id -> target id (`vocab.vocab_map`; the identity for the target itself), in which
    the end-of-turn pairs found are set (in place). `texts`:
    (the target's piece texts, each source's), needed only where a turn's offsets fail (`piece_texts`).
    `split_next`: what a position gets when the source splits the next target token differently:
    "source", its distribution anyway (the papers); "onehot", the one-hot on the next target token
    (`fuse.to_target`'s `same_next`)."""
    if split_next not in ("source", "onehot"):
        raise ValueError(f"split_next must be 'source' or 'onehot', got {split_next!r}")
    dists, ces = [], []
    for n, (rep, vmap) in enumerate(zip(sources, vocab_maps, strict=True)):
        groups, ends, end_pos = turn_groups(target, rep, *((texts[0], texts[1][n]) if texts else ()))
        for s_id, t_id in ends:
            # End of turn -> the target's own end of turn, written into the caller's map: the pair is
            # the same in every conversation, so the map is set once, not copied per conversation.
            vmap[s_id] = t_id
        same = end_pos if split_next == "onehot" else None
        dists.append(to_target(rep["top_ids"], rep["top_logprobs"], groups, target["ids"], vmap, k, same_next=same))
        ces.append(float(rep["ce"]))
    return fuse(dists, ces, method, k)


def piece_texts(tok, rep: dict) -> list[str]:
    """Each token's piece text (`tokens.piece_bytes`), for `turn_groups`'s MinED fallback."""
    from fusechat3.explicit.tokens import is_byte_level, piece_bytes

    byte_level = is_byte_level(tok)
    return [bytes_text(piece_bytes(p, byte_level)) for p in tok.convert_ids_to_tokens(rep["ids"].tolist())]
