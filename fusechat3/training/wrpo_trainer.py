"""The WRPO trainer (arXiv 2412.03187): `WRPOConfig` (TRL's DPOConfig plus the WRPO fields) and
`WRPOTrainer`, a small subclass of TRL's DPOTrainer. The entry point and the row checks are in `wrpo`.

A WRPO row is a DPO row plus `source_chosen`: the best response of a source model (y_ws)
beside the target's own best (`chosen`, y_wt) and worst (`rejected`, y_l) responses. The
chosen side mixes the two preferred responses:

    loss = -log σ(β · [α_t·r(y_ws) + (1 − α_t)·r(y_wt) − r(y_l)]),   r(y) = log πθ(y|x) − log πref(y|x)

α_t rises linearly from 0 to `wrpo_alpha` over the training steps (`wrpo_alpha_schedule:
linear`, the paper's schedule) or stays at `wrpo_alpha` (`fixed`). With
`wrpo_length_normalize: true`, each r(y) is divided by the number of tokens of y (as TRL's
`sigmoid_norm` does for DPO). The paper's settings: α = 0.1, β = 0.01, lr 3e-7.

What the subclass changes in TRL's DPOTrainer, and nothing more:

- tokenization: `source_chosen` is tokenized after TRL's own tokenization of the prompt,
  chosen and rejected, with TRL's rule for where the completion starts applied to all three;
- the collator puts the three completions in one batch, rows [y_wt; y_l; y_ws], so that one
  forward scores them all;
- reference log-probs: TRL's `compute_ref_log_probs` runs the reference forward (a
  reference model, the adapter-disabled policy, or the policy before training when
  precomputed) and is regrouped as (chosen side [B, 2] = (y_wt, y_ws), rejected [B]), so
  that TRL's `precompute_ref_log_probs` stores the chosen side as a pair per row;
- the loss and its metrics (`wrpo/alpha`, `rewards/{chosen,target_chosen,source_chosen,rejected}`,
  `rewards/accuracies` = the mixed chosen reward beats the rejected one, `rewards/margins`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer
from trl.data_utils import _tokenize, common_prefix_length, is_conversational
from trl.trainer.dpo_trainer import DataCollatorForPreference

from fusechat3.errors import RecipeError, RowError
from fusechat3.training.preference import WRPO_COLUMNS

ALPHA_SCHEDULES = ("linear", "fixed")

# DPOConfig options that change TRL's DPO loss; WRPO has its own loss, so they must keep their defaults.
_DPO_LOSS_OPTIONS = ("loss_type", "loss_weights", "ld_alpha", "f_divergence_type", "label_smoothing", "use_weighting")


# --------------------------------------------------------------------------- config


@dataclass
class WRPOConfig(DPOConfig):
    """`trl.DPOConfig` plus the WRPO fields; `beta` defaults to the paper's 0.01."""

    beta: float = field(default=0.01, metadata={"help": "β of the WRPO loss (0.01 in the paper)."})
    wrpo_alpha: float = field(
        default=0.1, metadata={"help": "α: weight of the source response in the chosen side (0.1 in the paper)."}
    )
    wrpo_alpha_schedule: str = field(
        default="linear",
        metadata={
            "help": "'linear': α_t rises from 0 to wrpo_alpha over the training steps; 'fixed': α_t = wrpo_alpha."
        },
    )
    wrpo_length_normalize: bool = field(
        default=False, metadata={"help": "Divide each r(y) by the number of tokens of y (like loss_type sigmoid_norm)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.wrpo_alpha <= 1.0:
            raise ValueError(f"wrpo_alpha={self.wrpo_alpha} must lie in [0, 1] (the paper uses 0.1)")
        if self.wrpo_alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"wrpo_alpha_schedule={self.wrpo_alpha_schedule!r}: choose one of {list(ALPHA_SCHEDULES)}")
        specs = {f.name: f for f in dataclasses.fields(DPOConfig)}
        for name in _DPO_LOSS_OPTIONS:
            spec = specs[name]
            default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is a DPO loss option that WRPO does not use (its loss is fixed); "
                    "remove it (for length normalization set wrpo_length_normalize: true)"
                )


def wrpo_alpha(alpha: float, schedule: str, step: int, max_steps: int) -> float:
    """α_t at optimizer step `step` of `max_steps`: `linear` rises from 0 (step 0) to α (the end), `fixed` is α.

    Before training has a step count (`max_steps` 0), the linear schedule is at its start, 0.
    """
    if schedule == "fixed":
        return alpha
    if schedule != "linear":
        raise ValueError(f"wrpo_alpha_schedule={schedule!r}: choose one of {list(ALPHA_SCHEDULES)}")
    if max_steps <= 0:
        return 0.0
    return alpha * min(max(step, 0), max_steps) / max_steps


# --------------------------------------------------------------------------- trainer


@dataclass
class DataCollatorForWRPO(DataCollatorForPreference):
    """TRL's preference collator with a third block of rows: [y_wt; y_l] as TRL builds them, then [y_ws].

    Each example also needs `source_chosen_ids`. The source rows are truncated and padded by
    TRL's own code (collated as the chosen half of a pair with an empty rejected side), then
    all rows are padded to one width.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        sources = [
            {"prompt_ids": e["prompt_ids"], "chosen_ids": e["source_chosen_ids"], "rejected_ids": []} for e in examples
        ]
        source = super().torch_call(sources)
        n = len(examples)
        width = max(batch["input_ids"].size(1), source["input_ids"].size(1))
        for key, value in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("completion_mask", 0)):
            pairs = F.pad(batch[key], (0, width - batch[key].size(1)), value=value)
            extra = F.pad(source[key][:n], (0, width - source[key].size(1)), value=value)
            batch[key] = torch.cat([pairs, extra])
        return batch


class WRPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with the WRPO loss on rows that have `prompt`, `chosen`, `rejected` and `source_chosen`.

    Needs `args=WRPOConfig(...)` and, unless a `data_collator` is given, the tokenizer as
    `processing_class`. Everything else (models, PEFT, reference handling, precomputing,
    logging, saving) is TRL's.
    """

    _tag_names = ["trl", "dpo", "wrpo"]
    _name = "WRPO"

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: WRPOConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ):
        if not isinstance(args, WRPOConfig):
            raise TypeError(f"WRPOTrainer needs args=WRPOConfig(...), got {type(args).__name__}")
        if data_collator is None:
            data_collator = _default_collator(processing_class, args)
        super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)

    # ---------------------------------------------------------------- data

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        first = next(iter(dataset))
        missing = [c for c in ("prompt", "chosen", "rejected", "source_chosen") if c not in first]
        if missing:
            raise RowError(
                f"{dataset_name} dataset: missing column(s) {missing}; a WRPO row needs {list(WRPO_COLUMNS)}"
            )
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        map_kwargs = {"fn_kwargs": {"processing_class": processing_class}}
        if isinstance(dataset, Dataset):  # IterableDataset.map takes neither num_proc nor desc
            map_kwargs |= {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing source_chosen of {dataset_name}"}
        return dataset.map(_tokenize_source, **map_kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "source_chosen_ids" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "source_chosen_ids"]

    # ---------------------------------------------------------------- log-probs

    def compute_ref_log_probs(self, model: Any, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs as (chosen side [B, 2] = (y_wt, y_ws), rejected [B]), from TRL's reference forward.

        TRL splits the rows in two halves; the halves are joined back into the 3B rows first.
        """
        logps = torch.cat(super().compute_ref_log_probs(model, inputs))
        target, rejected, source = logps.chunk(3)
        return torch.stack([target, source], dim=1), rejected

    def current_alpha(self) -> float:
        """α_t at the current optimizer step of the training run."""
        return wrpo_alpha(
            self.args.wrpo_alpha, self.args.wrpo_alpha_schedule, self.state.global_step, self.state.max_steps
        )

    def _compute_loss(self, model: Any, inputs: dict, return_outputs: bool) -> Any:
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        model_kwargs = {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "use_cache": False,
        }
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # The fused head's log-probs are 0 outside the completion; prompt-learning PEFT prepends virtual tokens.
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)

        if self.precompute_ref_logps:
            ref_pair, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            reference = self.ref_model if self.ref_model is not None else self.model  # PEFT: adapter disabled
            ref_pair, ref_rejected = self.compute_ref_log_probs(reference, inputs)
        target, rejected, source = logps.chunk(3)
        rewards = {  # r(y) per response
            "target_chosen": target - ref_pair[:, 0],
            "rejected": rejected - ref_rejected,
            "source_chosen": source - ref_pair[:, 1],
        }
        if self.args.wrpo_length_normalize:
            lengths = dict(zip(rewards, completion_mask.sum(dim=1).clamp(min=1).chunk(3), strict=True))
            rewards = {name: r / lengths[name] for name, r in rewards.items()}
        alpha = self.current_alpha()
        rewards["chosen"] = alpha * rewards["source_chosen"] + (1 - alpha) * rewards["target_chosen"]
        loss = -F.logsigmoid(self.beta * (rewards["chosen"] - rewards["rejected"])).mean()

        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
        self._log_metrics(
            mode, alpha, rewards, {"target_chosen": target, "rejected": rejected, "source_chosen": source}
        )

        if return_outputs:  # only for `compute_metrics`, which needs logits: the fused head does not build them
            with torch.no_grad():
                outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return loss, outputs
        return loss

    def _log_metrics(self, mode: str, alpha: float, rewards: dict, logps: dict) -> None:
        """α_t, β·r of each response and of the mixed chosen side, reward accuracy and margin, policy log-probs."""
        metrics = self._metrics[mode]
        metrics["wrpo/alpha"].append(alpha)
        scaled = {name: self.accelerator.gather(self.beta * r.detach()) for name, r in rewards.items()}
        for name, value in scaled.items():
            metrics[f"rewards/{name}"].append(value.mean().item())
        metrics["rewards/accuracies"].append((scaled["chosen"] > scaled["rejected"]).float().mean().item())
        metrics["rewards/margins"].append((scaled["chosen"] - scaled["rejected"]).mean().item())
        for name, value in logps.items():
            metrics[f"logps/{name}"].append(self.accelerator.gather(value.detach()).mean().item())


def _default_collator(processing_class: Any, args: WRPOConfig) -> DataCollatorForWRPO:
    """The WRPO collator with the tokenizer's pad token (TRL's choice: `pad_token`, else the tokenizer's, else EOS)."""
    if not isinstance(processing_class, PreTrainedTokenizerBase):
        raise TypeError("WRPOTrainer needs processing_class: the model's tokenizer (text-only models)")
    processing_class.pad_token = args.pad_token or processing_class.pad_token or processing_class.eos_token
    if processing_class.pad_token_id is None:
        raise RecipeError(
            f"pad token {processing_class.pad_token!r} is not in the tokenizer's vocabulary; set pad_token (in the "
            "wrpo section) to a token the model's tokenizer has"
        )
    return DataCollatorForWRPO(
        pad_token_id=processing_class.pad_token_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )


def _tokenize_source(example: dict, processing_class: Any) -> dict:
    """`source_chosen_ids` for a row TRL has tokenized, with TRL's completion-start rule over all three completions.

    TRL starts the completions where the tokenized prompt and prompt+completion diverge
    (usually at the end of the prompt). When prompt+source diverges earlier, the prompt is
    cut there for the whole row and the cut-off prompt tokens move to the front of each
    completion, exactly as TRL would have done had it seen the source response too.
    """
    kwargs = {"tools": example.get("tools"), **(example.get("chat_template_kwargs") or {})}
    if is_conversational(example):
        ids = _tokenize(processing_class, example["prompt"] + example["source_chosen"], **kwargs)["input_ids"]
    else:  # plain text: TRL appends EOS to chosen and rejected
        text, eos = example["source_chosen"], processing_class.eos_token
        ids = _tokenize(processing_class, example["prompt"] + (text if text.endswith(eos) else text + eos))["input_ids"]
    prompt = example["prompt_ids"]
    start = common_prefix_length(prompt, ids)
    moved = prompt[start:]
    return {
        "prompt_ids": prompt[:start],
        "chosen_ids": moved + example["chosen_ids"],
        "rejected_ids": moved + example["rejected_ids"],
        "source_chosen_ids": ids[start:],
    }
