"""Training of the target with TRL: SFT, then length-normalized DPO (FuseChat-3.0).

`train_sft` and `train_dpo` take TRL config fields verbatim and save a model that vLLM
loads. They are imported lazily: importing this package loads neither torch nor TRL,
and `python -m fusechat3.training.sft` does not find its module pre-imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train_dpo", "train_sft"]


def __getattr__(name: str) -> Any:
    if name == "train_sft":
        from fusechat3.training.sft import train_sft

        return train_sft
    if name == "train_dpo":
        from fusechat3.training.dpo import train_dpo

        return train_dpo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
