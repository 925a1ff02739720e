"""ArmoRM (`RLHFlow/ArmoRM-Llama3-8B-v0.1`, the FuseChat-3.0 paper's reward model), loaded natively.

The published checkpoint ships its own modeling code (`auto_map` -> `modeling_custom.LlamaForRewardModelWithGating`)
that imports a docstring constant transformers removed in 4.52, so it cannot load as published under
transformers 5. This module re-implements that architecture on transformers' own `LlamaModel`, with the same
parameter names, so the published weights load into it without `trust_remote_code`:

- `model.*`: the Llama backbone; `regression_layer` (Linear hidden -> num_objectives, no bias): one absolute
  rating per objective, read from the hidden state of the last token before the first pad token (the last
  real token with right padding);
- `gating`: an MLP over the hidden state of the prompt's end (`gating.layers.{0..n_hidden}`: n_hidden
  Linear+ReLU of width gating_hidden_dim, then Linear -> num_objectives, all with biases), a softmax at
  `gating_temperature`, times the scalar `gating.logit_scale`;
- `reward_transform_matrix` [num_objectives, num_objectives] (the published debiasing transform; identity
  until loaded);
- score = sum_k gating_output[k] * (rewards @ reward_transform_matrix)[k]; the output's `score` [B] (and
  `logits`, the same) is the preference score; `rewards` and `gating_output` are [B, num_objectives].

The prompt's end is the LAST occurrence of the Llama-3 token pattern `<|eot_id|><|start_header_id|>assistant
<|end_header_id|>\\n\\n` (ids 128009, 128006, 78191, 128007, 271 in Llama-3's tokenizer): the gating input is
the hidden state at its first token, the `<|eot_id|>` that closes the turn before the last assistant turn.
`gating_pattern_from_tokenizer` gives that pattern in another tokenizer's ids (a test checkpoint's).

The published config.json says `model_type: "llama"` (the architecture is named only in `architectures`), so
the Auto classes cannot tell it from a plain Llama: `load_armorm(path)` builds this class's config from it
and loads the weights; the "transformers" reward backend calls it whenever `is_armorm(config)`. Our own
config class (`model_type: "fusechat3_armorm"`) is registered with `AutoConfig` and
`AutoModelForSequenceClassification`, so a checkpoint saved from this class loads through the Auto classes.

Importing this module imports torch and transformers: import it inside functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaModel,
    LlamaPreTrainedModel,
)
from transformers import initialization as init
from transformers.configuration_utils import strict
from transformers.utils import ModelOutput

log = logging.getLogger(__name__)

ARCHITECTURE = "LlamaForRewardModelWithGating"
# The text whose tokens end the prompt (Llama-3 chat template), and its ids in Llama-3's tokenizer.
GATING_TEXT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
LLAMA3_GATING_IDS = (128009, 128006, 78191, 128007, 271)
_HEADER_TOKENS = ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")


def is_armorm(config: Any) -> bool:
    """Whether a loaded config (or config dict) names the ArmoRM architecture."""
    architectures = config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)
    return ARCHITECTURE in (architectures or [])


@strict
class ArmoRMConfig(LlamaConfig):
    """A Llama config plus ArmoRM's head settings (the published config.json's field names and defaults).
    `gating_token_pattern`: the ids that end the prompt (None: Llama-3's)."""

    model_type = "fusechat3_armorm"

    num_objectives: int = 19
    gating_temperature: int | float = 10
    gating_hidden_dim: int = 1024
    gating_n_hidden: int = 3
    gating_token_pattern: list[int] | None = None


class GatingNetwork(nn.Module):
    """ReLU MLP -> softmax(x / temperature) * logit_scale: the weight of each objective, from the prompt."""

    def __init__(self, in_features: int, out_features: int, *, hidden_dim: int, n_hidden: int, temperature: float):
        super().__init__()
        self.temperature = float(temperature)
        self.logit_scale = nn.Parameter(torch.ones(1))
        widths = [in_features] + [hidden_dim] * n_hidden + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=True) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.layers
        for layer in hidden:
            x = F.relu(layer(x))
        return F.softmax(last(x) / self.temperature, dim=-1) * self.logit_scale[0]


@dataclass
class ArmoRMOutput(ModelOutput):
    """`score` [B]: the preference score (also `logits`); `rewards` [B, K]: the objectives' ratings;
    `gating_output` [B, K]: their weights; `prompt_embedding` [B, H]: the gating input; `hidden_state`
    [B, H]: the regression input."""

    rewards: torch.FloatTensor | None = None
    hidden_state: torch.FloatTensor | None = None
    prompt_embedding: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


def last_pattern_start(input_ids: torch.Tensor, pattern: list[int] | tuple[int, ...]) -> torch.Tensor:
    """For each row of `input_ids` [B, T], the start of the LAST occurrence of `pattern`; ValueError (naming
    the rows) when a row has none."""
    width = len(pattern)
    if input_ids.shape[1] < width:
        raise ValueError(f"ArmoRM: sequences of {input_ids.shape[1]} tokens cannot hold the gating pattern {pattern}")
    windows = input_ids.unfold(1, width, 1)  # [B, T - width + 1, width]
    hits = (windows == torch.tensor(pattern, device=input_ids.device)).all(-1)
    starts = torch.arange(hits.shape[1], device=input_ids.device).expand_as(hits)
    last = torch.where(hits, starts, -1).max(-1).values
    if (last < 0).any():
        rows = (last < 0).nonzero().flatten().tolist()
        raise ValueError(
            f"ArmoRM: rows {rows} lack the assistant-turn token pattern {list(pattern)}: it scores a conversation "
            "that ends with an assistant turn, in its own (Llama-3) chat template"
        )
    return last


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    """ArmoRM's architecture (same name and parameter names as the published remote code)."""

    config_class = ArmoRMConfig
    config: ArmoRMConfig

    def __init__(self, config: ArmoRMConfig) -> None:
        super().__init__(config)
        self.num_objectives = config.num_objectives
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.reward_transform_matrix = nn.Parameter(torch.eye(config.num_objectives), requires_grad=False)
        self.gating = GatingNetwork(
            config.hidden_size,
            config.num_objectives,
            hidden_dim=config.gating_hidden_dim,
            n_hidden=config.gating_n_hidden,
            temperature=config.gating_temperature,
        )
        self.gating_token_pattern = list(config.gating_token_pattern or LLAMA3_GATING_IDS)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LlamaForRewardModelWithGating):
            init.eye_(module.reward_transform_matrix)
        elif isinstance(module, GatingNetwork):
            init.ones_(module.logit_scale)

    def reward_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The position the rewards are read at: the token before the first `pad_token_id` (the last token when
        a row has none), as the published model does; with right padding, the last real token."""
        length = input_ids.shape[1]
        pad = self.config.pad_token_id
        if pad is None:
            if input_ids.shape[0] != 1:
                raise ValueError("ArmoRM: a batch of several rows needs pad_token_id in the config")
            return torch.full((1,), length - 1, dtype=torch.long, device=input_ids.device)
        # argmax of an all-zero row is 0: (0 - 1) % length is then the last position.
        return (input_ids.eq(pad).int().argmax(-1) - 1) % length

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> ArmoRMOutput:
        if input_ids is None:
            raise ValueError("ArmoRM: input_ids are needed (the gating position is found in them)")
        kwargs.pop("labels", None)
        kwargs.pop("return_dict", None)
        kwargs["use_cache"] = False
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        ).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=hidden.device)
        last = hidden[rows, self.reward_positions(input_ids).to(hidden.device)]
        rewards = self.regression_layer(last)
        prompt = hidden[rows, last_pattern_start(input_ids, self.gating_token_pattern).to(hidden.device)]
        gating_output = self.gating(prompt)
        # `.to`: no-ops on one device; with device_map="auto" the head's parts may sit on different GPUs.
        transform = self.reward_transform_matrix.to(rewards.device)
        score = (gating_output.to(rewards.device) * (rewards @ transform)).sum(-1)
        return ArmoRMOutput(
            rewards=rewards,
            hidden_state=last,
            prompt_embedding=prompt,
            gating_output=gating_output,
            score=score,
            logits=score,
        )


AutoConfig.register(ArmoRMConfig.model_type, ArmoRMConfig, exist_ok=True)
AutoModelForSequenceClassification.register(ArmoRMConfig, LlamaForRewardModelWithGating, exist_ok=True)


def gating_pattern_from_tokenizer(tokenizer: Any) -> list[int] | None:
    """The gating pattern in `tokenizer`'s ids, when it has Llama-3's header tokens; else None."""
    vocab = tokenizer.get_vocab()
    if not all(token in vocab for token in _HEADER_TOKENS):
        return None
    pattern = list(tokenizer.encode(GATING_TEXT, add_special_tokens=False))
    if vocab["<|eot_id|>"] == LLAMA3_GATING_IDS[0] and tuple(pattern) != LLAMA3_GATING_IDS:
        log.warning("ArmoRM: a Llama-3 tokenizer encodes the gating pattern as %s, not %s", pattern, LLAMA3_GATING_IDS)
    return pattern


def armorm_config(config_dict: dict[str, Any], *, gating_token_pattern: list[int] | None = None) -> ArmoRMConfig:
    """Our config from a published ArmoRM config.json's fields (its `auto_map` to remote code and its
    `model_type: "llama"` dropped); `gating_token_pattern`, when given, overrides Llama-3's ids."""
    fields = {k: v for k, v in config_dict.items() if k not in ("auto_map", "model_type")}
    if gating_token_pattern is not None:
        fields["gating_token_pattern"] = list(gating_token_pattern)
    return ArmoRMConfig.from_dict(fields)


def load_armorm(
    path: str, *, revision: str | None = None, tokenizer: Any = None, **kwargs: Any
) -> LlamaForRewardModelWithGating:
    """Load an ArmoRM checkpoint (the published layout: `model_type: "llama"`, `auto_map` to remote code) into
    the native class; `tokenizer` (optional) sets the gating pattern in its ids; `kwargs` go to
    `from_pretrained` (dtype, device_map, ...). No remote code is read or run."""
    config_dict, _ = ArmoRMConfig.get_config_dict(path, revision=revision)
    pattern = None
    if tokenizer is not None and config_dict.get("gating_token_pattern") is None:
        pattern = gating_pattern_from_tokenizer(tokenizer)
    config = armorm_config(config_dict, gating_token_pattern=pattern)
    model = LlamaForRewardModelWithGating.from_pretrained(path, config=config, revision=revision, **kwargs)
    log.info(
        "reward model %s: ArmoRM (%s) loaded natively by fusechat3.scoring.armorm, not its remote code; "
        "gating pattern %s",
        path,
        ARCHITECTURE,
        model.gating_token_pattern,
    )
    return model
