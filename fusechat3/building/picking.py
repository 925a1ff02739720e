"""The picks of the FuseChat-3.0 rules, for one prompt: the SFT response, the DPO pair of one source,
the WRPO triplet, and the training-set rows they become (TRL's conversational formats plus the
analysis columns `prompt_id`, `domain`, `model`, `score_chosen`, `score_rejected`).

Every pick sorts by a total key (reward, then source name, then sample index), so the result never
depends on the order the responses came in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from fusechat3 import schema

# Domains whose rule is "correct beats incorrect" rather than "reward only"; the drop reason
# for a prompt with no correct response is named after how each domain checks correctness.
CORRECTNESS_DOMAINS = {"math": "no_correct", "code": "all_failed"}

# Pair gaps are compared with this tolerance so that a band edge typed in decimal
# (0.01) still holds for rewards like 0.03 - 0.02 = 0.009999999999999998 in binary floats.
_GAP_TOL = 1e-9

# When no source gives a kept pair, the prompt is counted under one reason: the one of the
# source that came closest to a pair (out of band > tie > too few responses).
_PAIR_FAILURE_ORDER = ("gap_below", "gap_above", "tie", "no_pair")


@dataclass(frozen=True)
class Resp:
    """One usable response: a Sample joined with its Score."""

    model: str
    sample_idx: int
    text: str
    reward: float | None
    correct: bool | None


def best_key(r: Resp) -> tuple:
    # Highest reward first; equal rewards (or no rewards) fall back to sample order.
    return (-r.reward if r.reward is not None else 0.0, r.model, r.sample_idx)


def _worst_key(r: Resp) -> tuple:
    return (r.reward if r.reward is not None else 0.0, r.model, r.sample_idx)


def _by_source(resps: list[Resp]) -> dict[str, list[Resp]]:
    groups: dict[str, list[Resp]] = defaultdict(list)
    for r in resps:
        groups[r.model].append(r)
    return dict(sorted(groups.items()))


def pick_sft(resps: list[Resp], rule: str, domain: str) -> tuple[Resp | None, str]:
    if not resps:
        return None, "no_valid"
    if rule == "correctness":
        resps = [r for r in resps if r.correct is True]
        if not resps:
            return None, CORRECTNESS_DOMAINS[domain]
    return min(resps, key=best_key), ""


def _judge_pair(chosen: Resp, rejected: Resp, band: tuple[float, float] | None) -> str | None:
    """None if the pair is kept, else the reason it is not.

    In the reward rule, equal best and worst rewards mean every reward of the source is equal,
    and the same response is then both chosen and rejected: the identical-text check counts it
    as a tie. In the correctness rule equal rewards are no tie (correctness orders the pair);
    the band, when set, decides."""
    if chosen.text.strip() == rejected.text.strip():
        return "tie"
    if chosen.reward is None or rejected.reward is None:
        return None  # rewardless correctness domain: correctness alone orders the pair
    gap = chosen.reward - rejected.reward
    if band is not None:
        if gap < band[0] - _GAP_TOL:
            return "gap_below"
        if gap > band[1] + _GAP_TOL:
            return "gap_above"
    return None


def pick_pair(
    resps: list[Resp], rule: str, domain: str, band: tuple[float, float] | None
) -> tuple[tuple[Resp, Resp] | None, str]:
    if not resps:
        return None, "no_valid"
    if rule == "correctness":
        if not any(r.correct is True for r in resps):
            return None, CORRECTNESS_DOMAINS[domain]
        if not any(r.correct is False for r in resps):
            return None, "no_incorrect"
    kept: list[tuple[Resp, Resp]] = []
    failures: set[str] = set()
    for group in _by_source(resps).values():
        if rule == "correctness":
            good = [r for r in group if r.correct is True]
            bad = [r for r in group if r.correct is False]
            if not good or not bad:
                failures.add("no_pair")
                continue
            pair = (min(good, key=best_key), min(bad, key=_worst_key))
        else:
            if len(group) < 2:
                failures.add("no_pair")
                continue
            pair = (min(group, key=best_key), min(group, key=_worst_key))
        reason = _judge_pair(*pair, band)
        if reason is None:
            kept.append(pair)
        else:
            failures.add(reason)
    if not kept:
        return None, next(r for r in _PAIR_FAILURE_ORDER if r in failures)
    # Several sources with an in-band pair: take the one whose chosen response has the highest
    # reward, so the DPO set prefers the best available answer (ties: source name order).
    return min(kept, key=lambda p: best_key(p[0])), ""


# ---------------------------------------------------------------- rows


def sft_row(prompt: dict, r: Resp) -> dict:
    return {
        "messages": [dict(m) for m in prompt["messages"]] + [schema.assistant(r.text)],
        "prompt_id": prompt["prompt_id"],
        "domain": prompt["domain"],
        "model": r.model,
        "score_chosen": r.reward,
        "score_rejected": None,
    }


def dpo_row(prompt: dict, chosen: Resp, rejected: Resp) -> dict:
    return {
        "prompt": [dict(m) for m in prompt["messages"]],
        "chosen": [schema.assistant(chosen.text)],
        "rejected": [schema.assistant(rejected.text)],
        "prompt_id": prompt["prompt_id"],
        "domain": prompt["domain"],
        "model": chosen.model,
        "score_chosen": chosen.reward,
        "score_rejected": rejected.reward,
    }


def wrpo_row(prompt: dict, source_chosen: Resp, chosen: Resp, rejected: Resp) -> dict:
    row = dpo_row(prompt, chosen, rejected)
    row["source_chosen"] = [schema.assistant(source_chosen.text)]
    row["model"] = source_chosen.model
    row["target_model"] = chosen.model
    row["score_source_chosen"] = source_chosen.reward
    return row


def pick_triplet(
    source_resps: list[Resp], target_resps: list[Resp], rule: str, domain: str
) -> tuple[tuple[Resp, Resp, Resp] | None, str]:
    """WRPO (arXiv 2412.03187): the best source response (over every source, by the SFT rule) and the target's
    own best and worst responses (by the DPO rule within the target, without a gap band). Reasons are
    prefixed `source_` / `target_` so the counts say which side failed."""
    best, reason = pick_sft(source_resps, rule, domain)
    if best is None:
        return None, f"source_{reason}"
    pair, reason = pick_pair(target_resps, rule, domain, band=None)
    if pair is None:
        return None, f"target_{reason}"
    return (best, *pair), ""
