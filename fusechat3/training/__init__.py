"""Training of the target with TRL: SFT, then length-normalized DPO (FuseChat-3.0) or WRPO.

`train_sft`, `train_dpo` and `train_wrpo` take TRL config fields verbatim and save a model
that vLLM loads. They are imported lazily: importing this package loads neither torch nor
TRL, and `python -m fusechat3.training.sft` does not find its module pre-imported.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public function and the module that defines it.
_EXPORTS = {
    "train_sft": "fusechat3.training.sft",
    "train_dpo": "fusechat3.training.dpo",
    "train_wrpo": "fusechat3.training.wrpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
