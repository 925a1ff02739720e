"""Representations: a model's top-k next-token log-probabilities at every position of a text, and
its cross-entropy on the text (the transformers backend; the stage and the vLLM backend are to come).

A conversation is rendered with the model's own chat template, as it was trained to read it. The
loss positions are the assistant turns' tokens and their end-of-turn token (FuseChat-2.0's
`mask_instruction`): the
cross-entropy is the mean over them of -log p(token | everything before), computed in float32.
Stored compactly: token ids and top-k ids int32, top-k log-probabilities float16.

Position t's distribution predicts token t + 1, so a text of L tokens has L - 1 useful rows; the
last row is kept (it predicts what follows the text) so that rows and tokens share an index.
"""

from __future__ import annotations

import numpy as np


def render(tok, messages: list[dict], plain: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the model's chat template writes it, and the character spans of the
    assistant turns' contents in it (found in order; a template that rewrites a content is refused).

    `plain`: plain text, as FuseLLM's continual training reads its corpus: the contents joined by a blank
    line, after the tokenizer's BOS token if it has one, with every content token labelled (one span)."""
    if plain:
        bos = tok.bos_token or ""
        text = bos + "\n\n".join(m["content"] for m in messages)
        return text, [(len(bos), len(text))]
    text = tok.apply_chat_template(messages, tokenize=False)
    spans, cursor = [], 0
    for m in messages:
        content = m["content"]
        at = text.find(content, cursor)
        if at < 0:
            raise ValueError(f"the chat template does not write this {m['role']} turn verbatim: {content[:60]!r}")
        if m["role"] == "assistant":
            spans.append((at, at + len(content)))
        cursor = at + len(content)
    return text, spans


def inside(spans: np.ndarray, a: int, b: int) -> np.ndarray:
    """Which tokens (character `spans`, [L, 2]) lie within characters [a, b) and cover at least one."""
    return (spans[:, 0] >= a) & (spans[:, 1] <= b) & (spans[:, 1] > spans[:, 0])


def encode(tok, messages: list[dict], plain: bool = False) -> dict:
    """Token ids of the rendered conversation (its special tokens are in the template), their
    character spans, the label mask (True on the tokens of an assistant turn's content and on the
    token right after it, the template's end of turn) and `turns`, the contents' character spans."""
    text, turns = render(tok, messages, plain)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(spans), dtype=bool)
    for a, b in turns:
        mask |= inside(spans, a, b)
        after = np.flatnonzero(spans[:, 0] >= b)
        if len(after):  # the template's end-of-turn token: the model learns to stop
            mask[after[0]] = True
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    return {"text": text, "ids": ids, "spans": spans, "mask": mask, "turns": np.asarray(turns, np.int64).reshape(-1, 2)}


def represent(
    model, tok, conversations: list[list[dict]], k: int = 10, batch_size: int = 8, plain: bool = False
) -> list[dict]:
    """Per conversation: `encode`'s fields plus `top_ids` int32 [L, k], `top_logprobs` float16 [L, k]
    and `ce` (float32 mean cross-entropy over the label positions; NaN where there are none).
    Batches are right-padded, so every row sees exactly its own tokens."""
    import torch

    encoded = [encode(tok, c, plain) for c in conversations]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["ids"]))  # similar lengths together
    for start in range(0, len(order), batch_size):
        chunk = [encoded[i] for i in order[start : start + batch_size]]
        width = max(len(e["ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, e in enumerate(chunk):
            ids[r, : len(e["ids"])] = torch.from_numpy(e["ids"].astype(np.int64))
            attention[r, : len(e["ids"])] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            top = logp.topk(k, dim=-1)
            nxt = logp[:, :-1].gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for r, e in enumerate(chunk):
            n = len(e["ids"])
            e["top_ids"] = top.indices[r, :n].cpu().numpy().astype(np.int32)
            e["top_logprobs"] = top.values[r, :n].cpu().numpy().astype(np.float16)
            labelled = torch.from_numpy(e["mask"][1:n])
            nll = -nxt[r, : n - 1].cpu()[labelled]
            e["ce"] = np.float32(nll.mean().item()) if len(nll) else np.float32("nan")
    return encoded


# The arrays of a representation and their stored dtypes: a row keeps each as its raw bytes (compact,
# exact, and read back with no per-element conversion).
_ARRAYS = {
    "ids": np.int32,
    "spans": np.int32,
    "mask": np.bool_,
    "turns": np.int32,
    "top_ids": np.int32,
    "top_logprobs": np.float16,
}


def to_row(prompt_id: str, rep: dict) -> dict:
    """A representation (`represent`'s output) as one parquet row of the `represent` stage."""
    row = {"prompt_id": prompt_id, "length": len(rep["ids"]), "k": int(rep["top_ids"].shape[1])}
    row.update({name: np.ascontiguousarray(rep[name], dtype=dt).tobytes() for name, dt in _ARRAYS.items()})
    row["ce"] = float(rep["ce"])
    return row


def from_row(row: dict) -> dict:
    """The representation stored by `to_row` (without the rendered `text`)."""
    n, k = int(row["length"]), int(row["k"])
    shapes = {"ids": (n,), "spans": (n, 2), "mask": (n,), "turns": (-1, 2), "top_ids": (n, k), "top_logprobs": (n, k)}
    rep = {name: np.frombuffer(row[name], dtype=dt).reshape(shapes[name]) for name, dt in _ARRAYS.items()}
    rep["spans"] = rep["spans"].astype(np.int64)
    rep["turns"] = rep["turns"].astype(np.int64)
    rep["ce"] = np.float32(row["ce"])
    return rep
