"""The row types that stages exchange through the run directory, in one place.

Every stage reads and writes plain dicts (one per parquet row); the functions here
make them, check them and give their stable ids, so that a field name lives here and
nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from fusechat3.errors import RowError

DOMAINS = ("instruction", "math", "code", "zh")
FINISH_REASONS = ("stop", "length", "error")

PROMPT_FIELDS = ("prompt_id", "domain", "source_dataset", "messages", "gold", "tests", "meta")
SAMPLE_FIELDS = (
    "prompt_id",
    "model",
    "sample_idx",
    "text",
    "finish_reason",
    "num_tokens",
    "sampling_key",
)
SCORE_FIELDS = ("prompt_id", "model", "sample_idx", "reward", "correct", "verdict")
# Analysis columns every training-set row keeps beside TRL's own columns.
TRAINING_META_FIELDS = ("prompt_id", "domain", "model", "score_chosen", "score_rejected")


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-able object, the same on every machine and run."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def prompt_id(source_dataset: str, messages: list[dict]) -> str:
    """Stable id of a prompt: a hash of its source dataset and its messages."""
    return stable_hash({"source": source_dataset, "messages": messages})


def make_prompt(
    *,
    domain: str,
    source_dataset: str,
    messages: list[dict],
    gold: str | None = None,
    tests: list[str] | None = None,
    meta: dict | None = None,
) -> dict:
    row = {
        "prompt_id": prompt_id(source_dataset, messages),
        "domain": domain,
        "source_dataset": source_dataset,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "gold": gold,
        "tests": list(tests) if tests is not None else None,
        "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True),
    }
    check_prompt(row)
    return row


def prompt_meta(row: dict) -> dict:
    """The `meta` of a Prompt row as a dict (it is stored as a JSON string: parquet-safe)."""
    meta = row.get("meta")
    if meta is None or meta == "":
        return {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def check_prompt(row: dict, where: str = "prompt") -> None:
    missing = [k for k in PROMPT_FIELDS if k not in row]
    if missing:
        raise RowError(f"{where}: missing field(s) {missing}; a Prompt row needs {list(PROMPT_FIELDS)}")
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise RowError(f"{where} {row['prompt_id']}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"{where} {row['prompt_id']}: messages[{i}] needs 'role' and 'content'")
    if msgs[-1]["role"] != "user":
        raise RowError(f"{where} {row['prompt_id']}: the last message must be the user's, got {msgs[-1]['role']!r}")
    if not isinstance(msgs[-1]["content"], str) or not msgs[-1]["content"].strip():
        raise RowError(f"{where} {row['prompt_id']}: the user message is empty; drop the prompt or give it text")
    if row["domain"] == "math" and not row.get("gold"):
        raise RowError(f"{where} {row['prompt_id']}: a math prompt needs a 'gold' answer")
    if row["domain"] == "code" and not row.get("tests"):
        raise RowError(f"{where} {row['prompt_id']}: a code prompt needs a non-empty 'tests' list")


def make_sample(
    *,
    prompt_id: str,
    model: str,
    sample_idx: int,
    text: str,
    finish_reason: str,
    num_tokens: int,
    sampling_key: str,
) -> dict:
    if finish_reason not in FINISH_REASONS:
        raise RowError(
            f"sample {prompt_id}/{model}/{sample_idx}: finish_reason {finish_reason!r} not in {FINISH_REASONS}"
        )
    return {
        "prompt_id": prompt_id,
        "model": model,
        "sample_idx": int(sample_idx),
        "text": text,
        "finish_reason": finish_reason,
        "num_tokens": int(num_tokens),
        "sampling_key": sampling_key,
        # Flags for the scoring stage: cut at max_tokens, or nothing but whitespace.
        "truncated": finish_reason == "length",
        "empty": not text.strip(),
    }


def make_score(
    *,
    prompt_id: str,
    model: str,
    sample_idx: int,
    reward: float | None,
    correct: bool | None,
    verdict: str,
    reward_status: str = "ok",
    truncated: bool = False,
    empty: bool = False,
) -> dict:
    if reward is not None and not math.isfinite(float(reward)):
        reward, reward_status = None, "non_finite"  # stored as null and counted by the builders
    return {
        "prompt_id": prompt_id,
        "model": model,
        "sample_idx": int(sample_idx),
        "reward": None if reward is None else float(reward),
        "correct": correct,
        "verdict": verdict,
        # Why `reward` is null ("too_long", "non_finite", "error", ...), or "ok".
        "reward_status": reward_status if reward is None else "ok",
        # The sampling stage's flags, carried over: scored, but the building rules drop them.
        "truncated": bool(truncated),
        "empty": bool(empty),
    }


def sample_key(row: dict) -> tuple[str, str, int]:
    """The key that joins a Sample with its Score."""
    return (row["prompt_id"], row["model"], int(row["sample_idx"]))


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
