"""FuseChat-3.0 selection rules: from scored samples to an SFT set and a DPO preference set.

Pure Python over the row dicts of `fusechat3.schema` (Prompt, Sample, Score). For every
prompt, a deterministic hash of its id puts it in the SFT or the DPO split (`building.split:
before_rules`), or, with `after_rules`, the split is made among the prompts that can give a row
so that the kept rows follow `sft_fraction` (`spec.assign_after_rules`); then the rule
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
from fusechat3.building.picking import (
    CORRECTNESS_DOMAINS,
    Resp,
    dpo_row,
    pick_pair,
    pick_sft,
    pick_triplet,
    sft_row,
    wrpo_row,
)
from fusechat3.building.spec import BuildingSpec, assign_after_rules, is_heldout, split_of
from fusechat3.errors import RecipeError, RowError


@dataclass
class BuildResult:
    """The SFT rows, the DPO rows, the WRPO rows (TRL conversational formats) and the counts behind them."""

    sft: list[dict]
    dpo: list[dict]
    stats: dict
    wrpo: list[dict] = field(default_factory=list)
    # The rows of held-out prompts, per set ("sft", "dpo", "wrpo"): not in the lists above.
    heldout: dict[str, list[dict]] = field(default_factory=dict)


def _rule_of(domain: str, spec: BuildingSpec) -> str:
    if domain in spec.sft_only_domains:
        return "sft_only"
    if domain in CORRECTNESS_DOMAINS:
        return "correctness"
    return "reward"  # instruction and any user-defined domain


# ---------------------------------------------------------------- indexing and validity


def _require_fields(row: Any, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(row, dict):
        raise RowError(f"{where}: expected a dict row, got {type(row).__name__}")
    missing = [k for k in fields if k not in row]
    if missing:
        raise RowError(f"{where}: missing field(s) {missing}; the row needs {list(fields)}")


def _index_prompts(prompts: list[dict]) -> dict[str, dict]:
    by_id: dict[str, dict] = {}
    for i, row in enumerate(prompts):
        schema.check_prompt(row, where=f"prompts[{i}]")
        if row["prompt_id"] in by_id:
            raise RowError(
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
            raise RowError(
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


# ---------------------------------------------------------------- the stage


def _check_sources(
    spec: BuildingSpec, only_source: str | None, target_source: str | None, prompts_by_id: dict, samples_by_key: dict
) -> None:
    """User mistakes in the source settings, caught before any row is built."""
    sources = sorted({model for (_, model, _) in samples_by_key})
    if only_source is not None and samples_by_key and only_source not in sources:
        raise RecipeError(f"building.only_source {only_source!r} has no samples; sources seen: {sources}")
    if target_source is not None and samples_by_key and target_source not in sources:
        raise RecipeError(
            f"the target's samples (source {target_source!r}, role: target) are missing; sources seen: {sources}"
        )
    sft_only = {pid for pid, p in prompts_by_id.items() if p["domain"] in spec.sft_only_domains}
    if not sft_only:
        return
    if spec.zh_source is None:
        domains = sorted({prompts_by_id[pid]["domain"] for pid in sft_only})
        raise RecipeError(
            f"{len(sft_only)} prompt(s) of SFT-only domain(s) {domains} but no designated source: "
            f"set building.zh_source to one of the sources {sources}"
        )
    if spec.zh_source == target_source:
        raise RecipeError(
            f"building.zh_source {spec.zh_source!r} is the target's own samples (role: target); name a source"
        )
    seen = {model for (pid, model, _) in samples_by_key if pid in sft_only}
    if seen and spec.zh_source not in seen:
        raise RecipeError(
            f"building.zh_source {spec.zh_source!r} has no samples for any SFT-only prompt; "
            f"sources seen there: {sorted(seen)}"
        )


def build_sets(
    prompts: list[dict],
    samples: list[dict],
    scores: list[dict],
    spec: BuildingSpec,
    *,
    only_source: str | None = None,
    target_source: str | None = None,
) -> BuildResult:
    """Apply the FuseChat-3.0 rules to every prompt; rows come out sorted by prompt_id.

    `only_source`: use that one source's responses only (the single-source controls).
    `target_source`: the source whose samples are the target's own (recipe `role: target`): they make no
    SFT or DPO rows, only WRPO's chosen and rejected; None: no WRPO set.
    """
    prompts_by_id = _index_prompts(prompts)
    samples_by_key = _index_by_key(samples, schema.SAMPLE_FIELDS, "samples")
    scores_by_key = _index_by_key(scores, schema.SCORE_FIELDS, "scores")
    missing_fraction = sorted(
        {p["domain"] for p in prompts_by_id.values()} - set(spec.sft_fraction) - set(spec.sft_only_domains)
    )
    if missing_fraction:
        raise RecipeError(
            f"building.sft_fraction has no entry for domain(s) {missing_fraction}; add one per domain, e.g. "
            f"`{missing_fraction[0]}: 0.4` (the fraction of its prompts that go to SFT, the rest to DPO)"
        )
    _check_sources(spec, only_source, target_source, prompts_by_id, samples_by_key)
    rewarded = _rewarded_domains(prompts_by_id, scores_by_key)

    rows_skipped = {"sample_without_prompt": 0, "score_without_sample": 0}
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    target_by_prompt: dict[str, list[dict]] = defaultdict(list)  # the target's own samples: WRPO only
    for key, sample in samples_by_key.items():
        if key[0] not in prompts_by_id:
            rows_skipped["sample_without_prompt"] += 1
        elif target_source is not None and key[1] == target_source:
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
    wrpo = target_source is not None and only_source is None
    splits = _splits_after_rules(prompts_by_id, by_prompt, scores_by_key, spec, rewarded)

    for pid in sorted(prompts_by_id):
        prompt = prompts_by_id[pid]
        domain = prompt["domain"]
        rule = _rule_of(domain, spec)
        split = splits.get(pid) or split_of(pid, domain, spec)
        counts["prompts"][domain] += 1
        split_counts[domain][split] += 1
        if rule == "sft_only" and only_source is not None and only_source != spec.zh_source:
            # A single-source control run keeps SFT-only domains only when its source is the designated one.
            reasons["drops"][domain]["excluded_source"] += 1
            reasons["ignored"][domain]["other_source"] += len(by_prompt.get(pid, ()))
            continue
        if not by_prompt.get(pid):
            reasons["drops"][domain]["no_samples"] += 1
            continue
        keep_source = spec.zh_source if rule == "sft_only" else only_source
        resps = _usable(by_prompt[pid], scores_by_key, rule, domain in rewarded, keep_source, reasons, domain)
        if split == "sft":
            pick, reason = pick_sft(resps, rule, domain)
            if pick is not None:
                sft_rows.append(sft_row(prompt, pick))
        else:
            pair, reason = pick_pair(resps, rule, domain, spec.gap_for(domain) if domain in rewarded else None)
            if pair is not None:
                dpo_rows.append(dpo_row(prompt, *pair))
            if wrpo:
                own = _usable(
                    target_by_prompt.get(pid, []), scores_by_key, rule, domain in rewarded, None, target_reasons, domain
                )
                triplet, why = pick_triplet(resps, own, rule, domain)
                if triplet is None:
                    reasons["wrpo_drops"][domain][why] += 1
                else:
                    wrpo_rows.append(wrpo_row(prompt, *triplet))
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
        "split_mode": spec.split,
        # SFT rows / (SFT + DPO rows) per domain (held-out rows included): sft_fraction, with after_rules.
        "kept_sft_share": {
            d: round(counts["sft"][d] / (counts["sft"][d] + counts["dpo"][d]), 4)
            if counts["sft"][d] + counts["dpo"][d]
            else None
            for d in domains
        },
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
    if spec.heldout_fraction > 0:
        sets = {"sft": sft_rows, "dpo": dpo_rows, **({"wrpo": wrpo_rows} if wrpo else {})}
        for name, rows in sets.items():
            heldout[name] = [r for r in rows if is_heldout(r["prompt_id"], spec)]
            rows[:] = [r for r in rows if not is_heldout(r["prompt_id"], spec)]
        stats["heldout"] = {name: len(rows) for name, rows in heldout.items()}
    return BuildResult(sft=sft_rows, dpo=dpo_rows, stats=stats, wrpo=wrpo_rows, heldout=heldout)


def _splits_after_rules(
    prompts_by_id: dict[str, dict],
    by_prompt: dict[str, list[dict]],
    scores_by_key: dict,
    spec: BuildingSpec,
    rewarded: set[str],
) -> dict[str, str]:
    """`building.split: after_rules`: the split of every prompt of a domain with both SFT and DPO rules ({} with
    `before_rules`). What a prompt can give is judged on every source's responses, whatever `only_source` says,
    so that a single-source control run splits its prompts as the main build does."""
    if spec.split != "after_rules":
        return {}
    options: dict[str, dict[str, tuple[bool, bool]]] = defaultdict(dict)
    for pid, prompt in prompts_by_id.items():
        domain = prompt["domain"]
        rule = _rule_of(domain, spec)
        if rule == "sft_only":
            continue
        scratch = {"invalid": {domain: Counter()}, "ignored": {domain: Counter()}}  # counted in the main pass
        resps = _usable(by_prompt.get(pid, []), scores_by_key, rule, domain in rewarded, None, scratch, domain)
        band = spec.gap_for(domain) if domain in rewarded else None
        options[domain][pid] = (
            pick_sft(resps, rule, domain)[0] is not None,
            pick_pair(resps, rule, domain, band)[0] is not None,
        )
    out: dict[str, str] = {}
    for domain, opts in options.items():
        out.update(assign_after_rules(opts, float(spec.sft_fraction[domain]), spec))
    return out


def _usable(
    samples: list[dict],
    scores_by_key: dict,
    rule: str,
    domain_rewarded: bool,
    keep_source: str | None,
    reasons: dict[str, dict[str, Counter]],
    domain: str,
) -> list[Resp]:
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
        out.append(Resp(sample["model"], int(sample["sample_idx"]), sample["text"], reward, correct))
    return out
