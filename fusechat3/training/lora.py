"""LoRA through peft: the `peft:` mapping of a training config or stage (peft.LoraConfig fields, plus
`merge`), checked before anything is loaded, and the merge of a trained adapter into its base.

The final save merges the adapter into the base model (a plain checkpoint that vLLM loads; the
adapter is kept in `<output_dir>/adapter`); `merge: false` saves only the adapter in `<output_dir>`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fusechat3.errors import RecipeError
from fusechat3.training.config import closest

MERGE_KEY = "merge"  # ours, not LoraConfig's: merge the adapter into the base model on save


def check_peft(raw: Any) -> None:
    """Raise a RecipeError naming the first key of `peft:` that is neither a peft.LoraConfig field nor `merge`."""
    from peft import LoraConfig

    if not isinstance(raw, dict):
        raise RecipeError("peft: must be a mapping of peft.LoraConfig fields (r, lora_alpha, target_modules, ...)")
    names = [f.name for f in dataclasses.fields(LoraConfig) if f.init]
    for key in raw:
        if key == MERGE_KEY:
            if not isinstance(raw[key], bool):
                raise RecipeError(f"peft.merge: must be true (merged model) or false (adapter only), got {raw[key]!r}")
        elif key not in names:
            hint = closest(str(key), [*names, MERGE_KEY], "see the peft.LoraConfig docs for the valid fields")
            raise RecipeError(f"peft.{key}: not a LoraConfig field; {hint}")


def lora_config(raw: dict) -> Any:
    """The peft.LoraConfig of a checked `peft:` mapping (`task_type` defaults to CAUSAL_LM)."""
    from peft import LoraConfig

    check_peft(raw)
    fields = {k: v for k, v in raw.items() if k != MERGE_KEY}
    fields.setdefault("task_type", "CAUSAL_LM")
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"peft: peft.LoraConfig rejects these settings: {' '.join(str(e).split())}") from None


def is_peft_model(model: Any) -> bool:
    """Whether the trainer's model carries a peft adapter."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merge_adapter(adapter_dir: str, output_dir: str, config: Any) -> None:
    """Load the base model with the saved adapter, merge, and save a plain checkpoint in `output_dir`.

    Merging from the saved adapter (rather than the in-memory model) works the same under
    ZeRO-3 and FSDP, whose in-memory weights are sharded. The base is loaded as TRL loaded
    it for training (`model_init_kwargs`, float32 by default), so a LoRA run saves the same
    dtype as a full fine-tuning run.
    """
    import torch
    from peft import AutoPeftModelForCausalLM

    kwargs = dict(config.model_init_kwargs) if isinstance(config.model_init_kwargs, dict) else {}
    dtype = kwargs.get("dtype", "float32")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = AutoPeftModelForCausalLM.from_pretrained(
        adapter_dir, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    model.merge_and_unload().save_pretrained(output_dir)
