"""Dataset building: turn scored samples into TRL-ready SFT and preference sets (FuseChat-3.0 rules)."""

from fusechat3.building.rules import BuildConfig, BuildResult, build_sets, split_of

__all__ = ["BuildConfig", "BuildResult", "build_sets", "split_of"]
