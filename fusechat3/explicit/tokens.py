"""Token pieces as the text they stand for, whatever the tokenizer's markers.

Tokenizers write the same text differently: byte-level BPE (GPT-2, Llama-3, Qwen) maps every
byte to a printable character (`Ġ` for a space, `Ċ` for a newline), SentencePiece writes a space
as `▁` and unknown characters as byte-fallback pieces (`<0xE4>`). Alignment and vocabulary
mapping compare pieces of two tokenizers, so both sides are first turned back into text here.
A piece that is part of a multi-byte character keeps its bytes as Latin-1 characters (one per
byte): it then matches no whole character, as it should, but two such pieces of the same bytes
still match each other.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable-character table (GPT-2's `bytes_to_unicode`):
    printable Latin-1 bytes stand for themselves, the other 68 bytes for the characters from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def bytes_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def is_byte_level(tok) -> bool:
    """Whether a fast tokenizer writes its pieces in byte-level BPE's alphabet (its decoder or
    pre-tokenizer is ByteLevel; only those two components are serialised, not the vocabulary)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    parts = [backend.decoder, backend.pre_tokenizer]
    return any(p is not None and "ByteLevel" in p.__getstate__().decode() for p in parts)


def piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The bytes of text one token piece stands for (see the module docstring)."""
    if byte_level:
        table = _byte_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        return piece.encode()  # a special or added token, written as itself
    if _BYTE_FALLBACK.fullmatch(piece):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()


def piece_text(piece: str, byte_level: bool) -> str:
    """The text one token piece stands for; a piece of a multi-byte character as Latin-1 bytes."""
    return bytes_text(piece_bytes(piece, byte_level))


def spans_from_pieces(pieces: list[bytes], text: str) -> np.ndarray | None:
    """Character spans of the tokens from their bytes, where the pieces spell `text` exactly (a
    SentencePiece-style leading space allowed); None where they do not. For tokenizers that give no
    offsets: the spans are then as exact as a fast tokenizer's. The pieces of one multi-byte
    character all get that character's span."""
    data = text.encode()
    joined = b"".join(pieces)
    if joined == data:
        shift = 0
    elif joined == b" " + data:
        shift = 1
    else:
        return None
    lengths = np.fromiter((len(p) for p in pieces), np.int64, len(pieces))
    ends = np.maximum(np.cumsum(lengths) - shift, 0)
    starts = np.maximum(ends - lengths, 0)
    char_of_byte = np.repeat(np.arange(len(text)), [len(c.encode()) for c in text])
    char_of_byte = np.append(char_of_byte, len(text))
    first = char_of_byte[starts]
    last = np.where(ends > starts, char_of_byte[np.maximum(ends - 1, 0)] + 1, first)
    return np.stack([first, last], axis=1)
