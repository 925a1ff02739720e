"""`ExplicitSpec`: the settings of explicit fusion (the recipe's `explicit:` section): where the training
texts come from, how the sources' representations are computed, and how the teacher is fused.

FuseLLM fuses every source into one target (`pairwise: false`); FuseChat-1.0/2.0 fuse the target
(the pivot) with each source in turn (`pairwise: true`: one teacher and one fused target per source,
to be merged afterwards). The fusion training itself is the recipe's `fuse_train:` section
(`training.fusion.FusionConfig` fields, as in a training config file).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusechat3.config import Section
from fusechat3.ray_exec import RaySpec

# The `represent` part of the target model itself (its own distribution: pairwise fusion's pivot).
TARGET_PART = "target"


class RepresentSpec(Section):
    """How each model's top-k next-token distributions are computed (`represent` stage)."""

    backend: Literal["hf", "vllm"] = "hf"  # hf: a batched transformers forward; vllm: `prompt_logprobs`
    batch_size: int = Field(16, ge=1)  # conversations per forward pass (hf)
    shard_size: int = Field(512, ge=1)  # conversations per shard: the unit of resume and of `--shard i/n`
    max_length: int = Field(4096, ge=2)  # longer conversations (in the model's own tokens) are skipped, counted
    dtype: str = "float32"  # the model's torch dtype (hf); log-softmax and cross-entropy are float32 anyway
    # vLLM engine options (vllm backend): max_model_len, dtype, ...; each source's own `engine:` (e.g. its
    # tensor_parallel_size) goes over these. Prefix caching is always off (cached tokens get no log-probs).
    engine: dict = {}
    # Represent on a Ray cluster: {address, replicas, gpus_per_replica, cpus_per_replica} (fusechat3.ray_exec), a
    # source's own `ray:` over it; null: in this process. Where the shards are made does not change them.
    ray: RaySpec | None = Field(None, exclude=True)  # where it runs: in no stage key


class ExplicitSpec(Section):
    """Explicit fusion (FuseLLM, FuseChat-1.0/2.0) of the recipe's sources into the target."""

    # The training texts. "prompts": each prompt row with its reference response (`meta["response"]`, which a
    # data builder writes: e.g. the toy world's `with_response: true`); "sft": the build stage's SFT set.
    corpus: Literal["prompts", "sft"] = "prompts"
    # How a text is written for the models: "chat", each model's own chat template with the loss on the
    # assistant turns (FuseChat); "plain", the turns' contents as plain text with the loss on every token
    # (FuseLLM's continual training on a text corpus: a prompt needs no response then).
    render: Literal["chat", "plain"] = "chat"
    sources: list[str] | None = Field(None, min_length=1)  # the sources fused (null: every role: source entry)
    top_k: int = Field(10, ge=1)  # ids kept per position, in each source's representation and in the teacher
    method: Literal["minCE", "avgCE"] = "minCE"  # how the sources' distributions are fused per text
    # A position whose next target token the source splits into pieces (" D" "OOR" for " DOOR") has a source
    # distribution over the first piece only, which maps to another target token (" D"). "source": use it
    # anyway (FuseLLM, FuseChat); "onehot": the one-hot on the next target token there.
    split_next: Literal["source", "onehot"] = "source"
    # false: one teacher of all the sources (FuseLLM); true: one per source, the target with that source
    # (FuseChat-1.0/2.0), each trained into its own fused target.
    pairwise: bool = False
    # Also train the control: the same target, the same texts and steps, the language-modelling loss alone
    # (fusion_lambda 1). Fusion has to beat it to show that the distributions carry knowledge.
    control: bool = True
    # Texts whose alignments are counted for the statistics vocabulary mapping (null: every text).
    vocab_texts: int | None = Field(None, ge=1)
    represent: RepresentSpec = RepresentSpec()
