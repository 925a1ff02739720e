"""FuseChat-3.0 selection rules: from scored samples to an SFT set and a DPO preference set.

Pure Python over the row dicts of `fusechat3.schema` (Prompt, Sample, Score). For every
prompt, a deterministic hash of its id puts it in the SFT or the DPO split, then the rule
of its domain picks the SFT response (best one) or the DPO pair (best vs worst of the
*same* source, kept only if the reward gap is inside the band). Every response that can
not be used and every prompt that gives no row is counted with a reason in
`BuildResult.stats`; nothing is dropped silently.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

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


def _default_sft_fraction() -> dict[str, float]:
    return {"instruction": 0.4, "math": 0.4, "code": 0.4}


@dataclass
class BuildConfig:
    """Settings of the building stage (recipe section `building`)."""

    sft_fraction: dict[str, float] = field(default_factory=_default_sft_fraction)
    reward_gap: tuple[float, float] | None = (0.01, 0.1)
    reward_gap_per_domain: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    sft_only_domains: tuple[str, ...] = ("zh",)
    sft_only_source: str | None = None
    only_source: str | None = None
    # The source whose samples are the target model's own responses (recipe `role: target`): they never
    # make SFT or DPO rows; they make WRPO's chosen/rejected. None: no WRPO set.
    target_source: str | None = None
    seed: int = 0
    heldout_fraction: float = 0.0  # share of prompts whose rows go to BuildResult.heldout instead

    def __post_init__(self) -> None:
        # Recipes come from YAML: accept lists where tuples are meant, and check ranges here
        # so that a bad value is one clear line naming the recipe key.
        for domain, frac in self.sft_fraction.items():
            if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0.0 <= float(frac) <= 1.0:
                raise ValueError(f"building.sft_fraction.{domain}: must be a number in [0, 1], got {frac!r}")
        self.reward_gap = _check_band(self.reward_gap, "building.reward_gap")
        self.reward_gap_per_domain = {
            d: _check_band(b, f"building.reward_gap_per_domain.{d}") for d, b in self.reward_gap_per_domain.items()
        }
        if isinstance(self.sft_only_domains, str):
            raise ValueError(
                f"building.sft_only_domains: must be a list of domain names, got the string {self.sft_only_domains!r}"
            )
        self.sft_only_domains = tuple(self.sft_only_domains)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"building.seed: must be an integer, got {self.seed!r}")

    def band_for(self, domain: str) -> tuple[float, float] | None:
        """The reward-gap band of a domain (None: no band)."""
        if domain in self.reward_gap_per_domain:
            return self.reward_gap_per_domain[domain]
        return self.reward_gap


@dataclass
class BuildResult:
    """The SFT rows, the DPO rows, the WRPO rows (TRL conversational formats) and the counts behind them."""

    sft: list[dict]
    dpo: list[dict]
    stats: dict
    wrpo: list[dict] = field(default_factory=list)
    # The rows of held-out prompts, per set ("sft", "dpo", "wrpo"): not in the lists above.
    heldout: dict[str, list[dict]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Resp:
    """One usable response: a Sample joined with its Score."""

    model: str
    sample_idx: int
    text: str
    reward: float | None
    correct: bool | None


def _check_band(band: Any, key: str) -> tuple[float, float] | None:
    if band is None:
        return None
    try:
        lo, hi = (float(x) for x in band)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: must be [low, high] (two numbers) or null, got {band!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{key}: must be [low, high] with finite low <= high, got {band!r}")
    return (lo, hi)


def split_of(prompt_id: str, domain: str, cfg: BuildConfig) -> str:
    """Which set a prompt goes to, "sft" or "dpo": a hash of (seed, prompt_id), never Python's random order."""
    if domain in cfg.sft_only_domains:
        return "sft"
    if domain not in cfg.sft_fraction:
        raise ValueError(
            f"building.sft_fraction has no entry for domain {domain!r}; add one, e.g. `{domain}: 0.4` "
            "(the fraction of its prompts that go to SFT, the rest to DPO)"
        )
    digest = schema.stable_hash({"seed": cfg.seed, "prompt_id": prompt_id}, length=16)
    u = int(digest, 16) / 16**16  # uniform in [0, 1): 64 bits of the hash
    return "sft" if u < float(cfg.sft_fraction[domain]) else "dpo"


def is_heldout(prompt_id: str, cfg: BuildConfig) -> bool:
    """Whether a prompt's rows are held out of training: a hash of (seed, prompt_id), independent of the split."""
    if cfg.heldout_fraction <= 0:
        return False
    digest = schema.stable_hash({"seed": cfg.seed, "heldout": prompt_id}, length=16)
    return int(digest, 16) / 16**16 < cfg.heldout_fraction


def _rule_of(domain: str, cfg: BuildConfig) -> str:
    if domain in cfg.sft_only_domains:
        return "sft_only"
    if domain in CORRECTNESS_DOMAINS:
        return "correctness"
    return "reward"  # instruction and any user-defined domain


# ---------------------------------------------------------------- indexing and validity


def _require_fields(row: Any, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(row, dict):
        raise schema.RowError(f"{where}: expected a dict row, got {type(row).__name__}")
    missing = [k for k in fields if k not in row]
    if missing:
        raise schema.RowError(f"{where}: missing field(s) {missing}; the row needs {list(fields)}")


def _index_prompts(prompts: list[dict]) -> dict[str, dict]:
    by_id: dict[str, dict] = {}
    for i, row in enumerate(prompts):
        schema.check_prompt(row, where=f"prompts[{i}]")
        if row["prompt_id"] in by_id:
            raise ValueError(
                f"prompts[{i}]: duplicate prompt_id {row['prompt_id']!r}; deduplicate the prompt set before building"
            )
        by_id[row["prompt_id"]] = row
    return by_id


def _index_by_key(rows: list[dict], fields: tuple[str, ...], name: str) -> dict[tuple[str, str, int], dict]:
    # A duplicated key would make the choice depend on input order: it is a broken run
    # directory, not a bad row to skip, so it stops the build with the key to look at.
    by_key: dict[tuple[str, str, int], dict] = {}
    for i, row in enumerate(rows):
        _require_fields(row, fields, f"{name}[{i}]")
        key = schema.sample_key(row)
        if key in by_key:
            raise ValueError(
                f"{name}[{i}]: duplicate (prompt_id, model, sample_idx) {key}; re-run the stage that wrote it "
                "(each sample must appear once)"
            )
        by_key[key] = row
    return by_key


def _finite(x: Any) -> bool:
    return x is not None and not isinstance(x, bool) and math.isfinite(float(x))


def _invalid_reason(sample: dict, score: dict | None, needs_reward: bool, needs_correct: bool) -> str | None:
    """Why a response can not be used, or None if it can. Sample-level reasons come first:
    a scorer may skip truncated responses, and those are `truncated`, not `missing_score`."""
    if sample["finish_reason"] == "error":
        return "error"
    if sample["finish_reason"] != "stop":
        return "truncated"
    if not (sample["text"] or "").strip():
        return "empty"
    if score is None:
        return "missing_score"
    if needs_reward and not _finite(score["reward"]):
        return "no_reward"
    if needs_correct and score["correct"] is None:
        return "unchecked"  # the verifier gave no verdict: neither a chosen nor a rejected answer
    return None


def _rewarded_domains(prompts_by_id: dict[str, dict], scores_by_key: dict) -> set[str]:
    """Domains where at least one score has a finite reward. In the others (math or code scored
    by correctness only) responses are ranked by sample order and the reward band is not applied."""
    out = set()
    for (pid, _, _), score in scores_by_key.items():
        prompt = prompts_by_id.get(pid)
        if prompt is not None and _finite(score["reward"]):
            out.add(prompt["domain"])
    return out


# ---------------------------------------------------------------- picking


def _best_key(r: _Resp) -> tuple:
    # Highest reward first; equal rewards (or no rewards) fall back to sample order.
    return (-r.reward if r.reward is not None else 0.0, r.model, r.sample_idx)


def _worst_key(r: _Resp) -> tuple:
    return (r.reward if r.reward is not None else 0.0, r.model, r.sample_idx)


def _by_source(resps: list[_Resp]) -> dict[str, list[_Resp]]:
    groups: dict[str, list[_Resp]] = defaultdict(list)
    for r in resps:
        groups[r.model].append(r)
    return dict(sorted(groups.items()))


def _pick_sft(resps: list[_Resp], rule: str, domain: str) -> tuple[_Resp | None, str]:
    if not resps:
        return None, "no_valid"
    if rule == "correctness":
        resps = [r for r in resps if r.correct is True]
        if not resps:
            return None, CORRECTNESS_DOMAINS[domain]
    return min(resps, key=_best_key), ""


def _judge_pair(chosen: _Resp, rejected: _Resp, band: tuple[float, float] | None) -> str | None:
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


def _pick_pair(
    resps: list[_Resp], rule: str, domain: str, band: tuple[float, float] | None
) -> tuple[tuple[_Resp, _Resp] | None, str]:
    if not resps:
        return None, "no_valid"
    if rule == "correctness":
        if not any(r.correct is True for r in resps):
            return None, CORRECTNESS_DOMAINS[domain]
        if not any(r.correct is False for r in resps):
            return None, "no_incorrect"
    kept: list[tuple[_Resp, _Resp]] = []
    failures: set[str] = set()
    for group in _by_source(resps).values():
        if rule == "correctness":
            good = [r for r in group if r.correct is True]
            bad = [r for r in group if r.correct is False]
            if not good or not bad:
                failures.add("no_pair")
                continue
            pair = (min(good, key=_best_key), min(bad, key=_worst_key))
        else:
            if len(group) < 2:
                failures.add("no_pair")
                continue
            pair = (min(group, key=_best_key), min(group, key=_worst_key))
        reason = _judge_pair(*pair, band)
        if reason is None:
            kept.append(pair)
        else:
            failures.add(reason)
    if not kept:
        return None, next(r for r in _PAIR_FAILURE_ORDER if r in failures)
    # Several sources with an in-band pair: take the one whose chosen response has the highest
    # reward, so the DPO set prefers the best available answer (ties: source name order).
    return min(kept, key=lambda p: _best_key(p[0])), ""


# ---------------------------------------------------------------- rows


def _sft_row(prompt: dict, r: _Resp) -> dict:
    return {
        "messages": [dict(m) for m in prompt["messages"]] + [schema.assistant(r.text)],
        "prompt_id": prompt["prompt_id"],
        "domain": prompt["domain"],
        "model": r.model,
        "score_chosen": r.reward,
        "score_rejected": None,
    }


def _dpo_row(prompt: dict, chosen: _Resp, rejected: _Resp) -> dict:
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


def _wrpo_row(prompt: dict, source_chosen: _Resp, chosen: _Resp, rejected: _Resp) -> dict:
    row = _dpo_row(prompt, chosen, rejected)
    row["source_chosen"] = [schema.assistant(source_chosen.text)]
    row["model"] = source_chosen.model
    row["target_model"] = chosen.model
    row["score_source_chosen"] = source_chosen.reward
    return row


def _pick_triplet(
    source_resps: list[_Resp], target_resps: list[_Resp], rule: str, domain: str
) -> tuple[tuple[_Resp, _Resp, _Resp] | None, str]:
    """WRPO (arXiv 2412.03187): the best source response (over every source, by the SFT rule) and the target's
    own best and worst responses (by the DPO rule within the target, without a gap band). Reasons are
    prefixed `source_` / `target_` so the counts say which side failed."""
    best, reason = _pick_sft(source_resps, rule, domain)
    if best is None:
        return None, f"source_{reason}"
    pair, reason = _pick_pair(target_resps, rule, domain, band=None)
    if pair is None:
        return None, f"target_{reason}"
    return (best, *pair), ""


# ---------------------------------------------------------------- the stage


def _check_sources(cfg: BuildConfig, prompts_by_id: dict, samples_by_key: dict) -> None:
    """User mistakes in the source settings, caught before any row is built."""
    sources = sorted({model for (_, model, _) in samples_by_key})
    if cfg.only_source is not None and samples_by_key and cfg.only_source not in sources:
        raise ValueError(f"building.only_source {cfg.only_source!r} has no samples; sources seen: {sources}")
    if cfg.target_source is not None and samples_by_key and cfg.target_source not in sources:
        raise ValueError(
            f"the target's samples (source {cfg.target_source!r}, role: target) are missing; sources seen: {sources}"
        )
    sft_only = {pid for pid, p in prompts_by_id.items() if p["domain"] in cfg.sft_only_domains}
    if not sft_only:
        return
    if cfg.sft_only_source is None:
        domains = sorted({prompts_by_id[pid]["domain"] for pid in sft_only})
        raise ValueError(
            f"{len(sft_only)} prompt(s) of SFT-only domain(s) {domains} but no designated source: "
            f"set building.zh_source to one of the sources {sources}"
        )
    if cfg.sft_only_source == cfg.target_source:
        raise ValueError(
            f"building.zh_source {cfg.sft_only_source!r} is the target's own samples (role: target); name a source"
        )
    seen = {model for (pid, model, _) in samples_by_key if pid in sft_only}
    if seen and cfg.sft_only_source not in seen:
        raise ValueError(
            f"building.zh_source {cfg.sft_only_source!r} has no samples for any SFT-only prompt; "
            f"sources seen there: {sorted(seen)}"
        )


def build_sets(prompts: list[dict], samples: list[dict], scores: list[dict], cfg: BuildConfig) -> BuildResult:
    """Apply the FuseChat-3.0 rules to every prompt; rows come out sorted by prompt_id."""
    prompts_by_id = _index_prompts(prompts)
    samples_by_key = _index_by_key(samples, schema.SAMPLE_FIELDS, "samples")
    scores_by_key = _index_by_key(scores, schema.SCORE_FIELDS, "scores")
    missing_fraction = sorted(
        {p["domain"] for p in prompts_by_id.values()} - set(cfg.sft_fraction) - set(cfg.sft_only_domains)
    )
    if missing_fraction:
        raise ValueError(
            f"building.sft_fraction has no entry for domain(s) {missing_fraction}; add one per domain, e.g. "
            f"`{missing_fraction[0]}: 0.4` (the fraction of its prompts that go to SFT, the rest to DPO)"
        )
    _check_sources(cfg, prompts_by_id, samples_by_key)
    rewarded = _rewarded_domains(prompts_by_id, scores_by_key)

    rows_skipped = {"sample_without_prompt": 0, "score_without_sample": 0}
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    target_by_prompt: dict[str, list[dict]] = defaultdict(list)  # the target's own samples: WRPO only
    for key, sample in samples_by_key.items():
        if key[0] not in prompts_by_id:
            rows_skipped["sample_without_prompt"] += 1
        elif cfg.target_source is not None and key[1] == cfg.target_source:
            target_by_prompt[key[0]].append(sample)
        else:
            by_prompt[key[0]].append(sample)
    rows_skipped["score_without_sample"] = sum(1 for key in scores_by_key if key not in samples_by_key)

    domains = sorted({p["domain"] for p in prompts_by_id.values()})
    counts = {name: Counter() for name in ("prompts", "sft", "dpo", "wrpo")}
    split_counts = {d: Counter() for d in domains}
    reasons = {name: {d: Counter() for d in domains} for name in ("drops", "invalid", "ignored", "wrpo_drops")}
    # The target's unusable responses are counted apart: they are not the sources' responses.
    target_reasons = {"invalid": {d: Counter() for d in domains}, "ignored": {d: Counter() for d in domains}}
    sft_rows: list[dict] = []
    dpo_rows: list[dict] = []
    wrpo_rows: list[dict] = []
    wrpo = cfg.target_source is not None and cfg.only_source is None

    for pid in sorted(prompts_by_id):
        prompt = prompts_by_id[pid]
        domain = prompt["domain"]
        rule = _rule_of(domain, cfg)
        split = split_of(pid, domain, cfg)
        counts["prompts"][domain] += 1
        split_counts[domain][split] += 1
        if rule == "sft_only" and cfg.only_source is not None and cfg.only_source != cfg.sft_only_source:
            # A single-source control run keeps SFT-only domains only when its source is the designated one.
            reasons["drops"][domain]["excluded_source"] += 1
            reasons["ignored"][domain]["other_source"] += len(by_prompt.get(pid, ()))
            continue
        if not by_prompt.get(pid):
            reasons["drops"][domain]["no_samples"] += 1
            continue
        keep_source = cfg.sft_only_source if rule == "sft_only" else cfg.only_source
        resps = _usable(by_prompt[pid], scores_by_key, rule, domain in rewarded, keep_source, reasons, domain)
        if split == "sft":
            pick, reason = _pick_sft(resps, rule, domain)
            if pick is not None:
                sft_rows.append(_sft_row(prompt, pick))
        else:
            pair, reason = _pick_pair(resps, rule, domain, cfg.band_for(domain) if domain in rewarded else None)
            if pair is not None:
                dpo_rows.append(_dpo_row(prompt, *pair))
            if wrpo:
                own = _usable(
                    target_by_prompt.get(pid, []), scores_by_key, rule, domain in rewarded, None, target_reasons, domain
                )
                triplet, why = _pick_triplet(resps, own, rule, domain)
                if triplet is None:
                    reasons["wrpo_drops"][domain][why] += 1
                else:
                    wrpo_rows.append(_wrpo_row(prompt, *triplet))
                    counts["wrpo"][domain] += 1
        if reason:
            reasons["drops"][domain][reason] += 1
        else:
            counts[split][domain] += 1

    stats = {
        "prompts": {d: counts["prompts"][d] for d in domains},
        "sft": {d: counts["sft"][d] for d in domains},
        "dpo": {d: counts["dpo"][d] for d in domains},
        **({"wrpo": {d: counts["wrpo"][d] for d in domains}} if wrpo else {}),
        "split": {d: {"sft": split_counts[d]["sft"], "dpo": split_counts[d]["dpo"]} for d in domains},
        **{
            name: {d: dict(sorted(c.items())) for d, c in per.items()}
            for name, per in reasons.items()
            if wrpo or name != "wrpo_drops"
        },
        **(
            {"wrpo_invalid": {d: dict(sorted(c.items())) for d, c in target_reasons["invalid"].items()}} if wrpo else {}
        ),
        "rows": rows_skipped,
    }
    heldout: dict[str, list[dict]] = {}
    if cfg.heldout_fraction > 0:
        sets = {"sft": sft_rows, "dpo": dpo_rows, **({"wrpo": wrpo_rows} if wrpo else {})}
        for name, rows in sets.items():
            heldout[name] = [r for r in rows if is_heldout(r["prompt_id"], cfg)]
            rows[:] = [r for r in rows if not is_heldout(r["prompt_id"], cfg)]
        stats["heldout"] = {name: len(rows) for name, rows in heldout.items()}
    return BuildResult(sft=sft_rows, dpo=dpo_rows, stats=stats, wrpo=wrpo_rows, heldout=heldout)


def _usable(
    samples: list[dict],
    scores_by_key: dict,
    rule: str,
    domain_rewarded: bool,
    keep_source: str | None,
    reasons: dict[str, dict[str, Counter]],
    domain: str,
) -> list[_Resp]:
    """The prompt's usable responses (in any order: every pick sorts by a total key); the others are counted."""
    # The reward-only rule always needs a reward; the others use one wherever the domain was scored with one.
    needs_reward = rule == "reward" or domain_rewarded
    out = []
    for sample in samples:
        if keep_source is not None and sample["model"] != keep_source:
            reasons["ignored"][domain]["other_source"] += 1
            continue
        score = scores_by_key.get(schema.sample_key(sample))
        reason = _invalid_reason(sample, score, needs_reward, needs_correct=rule == "correctness")
        if reason is not None:
            reasons["invalid"][domain][reason] += 1
            continue
        reward = float(score["reward"]) if needs_reward else None
        correct = None if score["correct"] is None else bool(score["correct"])  # numpy/arrow bools too
        out.append(_Resp(sample["model"], int(sample["sample_idx"]), sample["text"], reward, correct))
    return out
