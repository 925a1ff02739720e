"""`BuildingSpec`: the settings of the FuseChat-3.0 selection rules (the recipe's `building:`
section), and the two hashes that place a prompt: the SFT/DPO split and the held-out share.

Both hashes are of (seed, prompt_id), never Python's random order: a prompt lands in the same
set on every machine and every re-run, whatever else the prompt set holds.

Two ways to split (`building.split`):

- `before_rules`: each prompt goes to SFT when its hash falls under the domain's `sft_fraction`,
  before the rules run: `sft_fraction` is the share of *prompts*; the rows the rules then drop
  (DPO loses more: ties, the reward band) tilt the kept rows towards SFT.
- `after_rules` (the paper: its kept instruction rows are exactly 4:6): the rules first say, for
  every prompt, whether it can give an SFT row and whether it can give a DPO pair; then
  `assign_after_rules` places the prompts so that the *kept* rows are SFT:DPO = `sft_fraction`
  as closely as whole rows allow (see there). Deterministic, by the same hash.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator

from fusechat3 import schema
from fusechat3.config import Section, in_range
from fusechat3.errors import RecipeError


def _check_band(band: list[float]) -> list[float]:
    if len(band) != 2 or not 0 <= band[0] <= band[1]:
        raise ValueError(f"must be two numbers [lo, hi] with 0 <= lo <= hi, got {band}")
    return band


Band = Annotated[list[float], AfterValidator(_check_band)]  # a reward-gap band [lo, hi]


class BuildingSpec(Section):
    """The FuseChat-3.0 selection rules that turn scored samples into SFT and DPO sets."""

    # Fraction of each domain's prompts that go to SFT; the rest go to DPO (paper: 4:6).
    sft_fraction: dict[str, Annotated[float, in_range(0, 1)]] = {"instruction": 0.4, "math": 0.4, "code": 0.4}
    # [lo, hi]: keep a DPO pair if lo <= reward gap <= hi (FuseChat-3.0: [0.01, 0.1] on ArmoRM's scale); null: no band.
    reward_gap: Band | None = [0.01, 0.1]
    reward_gap_per_domain: dict[str, Band | None] = {}  # per-domain band; null: no band for that domain
    sft_only_domains: list[str] = ["zh"]  # domains that give SFT rows only
    zh_source: str | None = None  # the one source whose responses make the SFT-only rows (must name a source)
    seed: int = 0  # seed of the SFT/DPO prompt split and of the held-out share
    # Fraction of the prompts whose rows are held out of training, in build/<set>-heldout.parquet: the
    # held-out data of the training stages' evaluation and checkpoint choice. 0: none.
    heldout_fraction: Annotated[float, in_range(0, 0.5)] = 0.0
    # before_rules: sft_fraction is the share of each domain's prompts, split by hash before the rules run;
    # after_rules: the share of the kept rows, the split made among the prompts that survive the rules (the paper).
    split: Literal["before_rules", "after_rules"] = "before_rules"

    def gap_for(self, domain: str) -> list[float] | None:
        """The reward-gap band of a domain's DPO pairs (None: no band)."""
        return self.reward_gap_per_domain.get(domain, self.reward_gap)


def split_of(prompt_id: str, domain: str, spec: BuildingSpec) -> str:
    """Which set a prompt goes to, "sft" or "dpo": a hash of (seed, prompt_id)."""
    if domain in spec.sft_only_domains:
        return "sft"
    if domain not in spec.sft_fraction:
        raise RecipeError(
            f"building.sft_fraction has no entry for domain {domain!r}; add one, e.g. `{domain}: 0.4` "
            "(the fraction of its prompts that go to SFT, the rest to DPO)"
        )
    return "sft" if split_hash(prompt_id, spec) < float(spec.sft_fraction[domain]) else "dpo"


def split_hash(prompt_id: str, spec: BuildingSpec) -> float:
    """The split's hash of (seed, prompt_id), uniform in [0, 1): 64 bits of a stable hash."""
    digest = schema.stable_hash({"seed": spec.seed, "prompt_id": prompt_id}, length=16)
    return int(digest, 16) / 16**16


def assign_after_rules(options: dict[str, tuple[bool, bool]], fraction: float, spec: BuildingSpec) -> dict[str, str]:
    """`after_rules`: the split of one domain's prompts, from what each can give, `{prompt_id: (sft_ok, dpo_ok)}`.

    A prompt that can give only an SFT row goes to SFT, only a DPO pair to DPO; the K prompts that can give a row
    are the kept rows. SFT gets round(fraction * K) of them, as near as the prompts allow (at least the SFT-only
    ones, at most those plus the prompts that can give both): the prompts that can give both fill it in the order
    of their split hash (lowest first, as `split_of` sends low hashes to SFT), the rest of them go to DPO. So the
    kept SFT rows are within half a row of fraction * K whenever enough prompts can give both. A prompt that can
    give neither is placed by `split_of`'s hash, only to name its drop reason.
    """
    both = sorted((pid for pid, (s, d) in options.items() if s and d), key=lambda pid: (split_hash(pid, spec), pid))
    sft_only = sum(1 for s, d in options.values() if s and not d)
    kept = sum(1 for s, d in options.values() if s or d)
    n_sft = min(max(math.floor(fraction * kept + 0.5), sft_only), sft_only + len(both))
    to_sft = set(both[: n_sft - sft_only])
    out = {}
    for pid, (s, d) in options.items():
        if s and d:
            out[pid] = "sft" if pid in to_sft else "dpo"
        elif s or d:
            out[pid] = "sft" if s else "dpo"
        else:
            out[pid] = "sft" if split_hash(pid, spec) < fraction else "dpo"
    return out


def is_heldout(prompt_id: str, spec: BuildingSpec) -> bool:
    """Whether a prompt's rows are held out of training: a hash of (seed, prompt_id), independent of the split."""
    if spec.heldout_fraction <= 0:
        return False
    digest = schema.stable_hash({"seed": spec.seed, "heldout": prompt_id}, length=16)
    return int(digest, 16) / 16**16 < spec.heldout_fraction
