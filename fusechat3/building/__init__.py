"""Dataset building: turn scored samples into TRL-ready SFT and preference sets (FuseChat-3.0 rules).

- `spec`: `BuildingSpec` (the recipe's `building:` section), the SFT/DPO split and the held-out share;
- `picking`: the per-prompt picks (SFT response, same-source DPO pair, WRPO triplet) and their rows;
- `rules`: `build_sets`, which applies them to a run's prompts, samples and scores and counts every drop.
"""

from fusechat3.building.rules import BuildResult, build_sets
from fusechat3.building.spec import BuildingSpec, split_of

__all__ = ["BuildResult", "BuildingSpec", "build_sets", "split_of"]
