"""Test-wide settings (never reach the Hub, keep vLLM on CPU small and in-process) and the shared fixtures:
the tiny random-weight Llama builder, the tiny chat Llama and toy SFT/DPO data of the training tests, and
a datasets cache kept out of the home folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


# --------------------------------------------------------------------------- the datasets cache


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the datasets cache (TRL's precomputed reference log-probs land there too) out of the home folder,
    for one module: `pytestmark = pytest.mark.usefixtures("datasets_cache")`."""
    import datasets

    cache = tmp_path_factory.mktemp("hf-datasets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
        mp.setenv("HF_DATASETS_CACHE", str(cache))  # for the entry-point subprocesses
        yield cache


# --------------------------------------------------------------------------- tiny models


def _build_tiny_llama(
    path: Path,
    *,
    corpus: list[str],
    vocab_size: int,
    special_tokens: list[str],
    tokens: dict[str, str],
    chat_template: str,
    byte_level: bool = True,
    head: str = "causal",
    config: dict[str, Any] | None = None,
    tweak: Callable[[Any, Any], None] | None = None,
) -> None:
    """A BPE tokenizer trained on `corpus` (byte-level, or whitespace-split with `tokens["unk_token"]`) with
    `chat_template`, and a random 2-layer Llama (hidden 64, 2 heads, seed 0, the tokenizer's BOS/EOS/pad
    ids unless `config` says otherwise) with a causal-LM or a sequence-classification (`head="classifier"`)
    head; `tweak(model, tokenizer)` edits the weights (without gradients) before they are saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=tokens["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens)
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)

    torch.manual_seed(0)
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        **(special_ids | (config or {})),
    )
    model = (LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification)(llama)
    if tweak is not None:
        with torch.no_grad():
            tweak(model, tokenizer)
    model.save_pretrained(path)


@pytest.fixture(scope="session")
def make_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """`make_tiny_llama(name, **settings)`: a tiny random Llama and its tokenizer in a new temporary folder,
    whose path it returns (the settings: see `_build_tiny_llama`). Call it from a module- or session-scoped
    fixture so that each model is built once."""

    def make(name: str, **settings: Any) -> str:
        path = tmp_path_factory.mktemp(name)
        _build_tiny_llama(path, **settings)
        return str(path)

    return make


# The words of the training tests' toy chats.
WORDS = "the cat sat on a mat and the dog ran to red blue green add two three four five six what is sum".split()

# A Llama-3-like template without `{% generation %}` markers: the loss mask must come from the
# prompt-completion split, not from the template.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama(make_tiny_llama) -> str:
    """The training tests' model: a 2-layer LlamaForCausalLM (hidden 64, 2 heads of 32) and a byte-level BPE
    tokenizer with a Llama-3-like chat template (`<|start|>role\\ncontent<|end|>`, EOS `<|end|>`)."""
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + ["system user assistant be brief"]
    return make_tiny_llama(
        "tiny-llama",
        corpus=corpus * 4,
        vocab_size=400,
        special_tokens=["<pad>", "<|start|>", "<|end|>"],
        tokens={"eos_token": "<|end|>", "pad_token": "<pad>"},
        chat_template=CHAT_TEMPLATE,
        config={"head_dim": 32, "max_position_embeddings": 256},
    )


def _chat(i: int) -> list[dict]:
    question = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(5))
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"what is {question}?"}]


def _meta(i: int) -> dict:
    return {"prompt_id": f"p{i}", "domain": "instruction", "model": "src", "score_chosen": 0.5, "score_rejected": None}


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Eight good SFT rows for `tiny_llama` and one bad one (ends with a user turn), with the analysis columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"messages": _chat(i) + [{"role": "assistant", "content": f"the sum is {WORDS[i]}"}], **_meta(i)}
        for i in range(8)
    ]
    rows.append({"messages": _chat(9), **_meta(9)})
    path = tmp_path_factory.mktemp("sft") / "sft-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture(scope="session")
def dpo_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six DPO pairs for `tiny_llama`: chosen and rejected differ in words and in length."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(6):
        chosen = [{"role": "assistant", "content": f"the sum is {WORDS[i]}"}]
        rejected = [{"role": "assistant", "content": f"red blue {WORDS[i + 3]} dog cat mat"}]
        rows.append({"prompt": _chat(i), "chosen": chosen, "rejected": rejected, **_meta(i), "score_rejected": 0.1})
    path = tmp_path_factory.mktemp("dpo") / "dpo-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)
