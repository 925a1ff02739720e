"""Work split into shards, as the sharded stages (sample, represent) do it: shard k of a stage holds rows
[k*size, (k+1)*size) of its input, is written atomically and recorded with its figures (`Stage.write_shard`'s
info), and `--shard I/N` gives a worker the shards k with k % N == I. `totals` adds the recorded figures up
over every shard, whichever worker wrote it.
"""

from __future__ import annotations

import argparse
from collections import Counter


def shard_ranges(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(i, min(i + shard_size, n_rows)) for i in range(0, n_rows, shard_size)]


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def shard_arg(text: str) -> tuple[int, int]:
    """`--shard I/N` -> (I, N)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like I/N (e.g. 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text}: need 0 <= I < N")
    return i, n


def totals(infos: dict[str, dict]) -> dict:
    """The shard records' figures added up: rows, tokens, seconds and tokens/s, and the skipped inputs
    (each record's `skipped`, {input id: reason}) by reason, with their ids."""
    skipped: Counter = Counter()
    skipped_ids: dict[str, list[str]] = {}
    for shard in sorted(infos):
        for pid, why in sorted(infos[shard].get("skipped", {}).items()):
            skipped[why] += 1
            skipped_ids.setdefault(why, []).append(pid)
    tokens = sum(i.get("tokens", 0) for i in infos.values())
    seconds = sum(i.get("seconds", 0.0) for i in infos.values())
    return {
        "rows": sum(i["rows"] for i in infos.values()),
        "tokens": tokens,
        # Shard seconds summed over workers: the throughput of one worker.
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "skipped": dict(skipped),
        "skipped_prompt_ids": skipped_ids,
    }
