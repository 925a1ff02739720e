"""Tests of SFT and length-normalized DPO training: real TRL trainers on a tiny Llama built in tmp_path."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

# A Llama-3-like template without `{% generation %}` markers: the loss mask must come from
# the prompt-completion split, not from the template.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)
WORDS = "the cat sat on a mat and the dog ran to red blue green add two three four five six what is sum".split()


def _chat(i: int) -> list[dict]:
    question = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(5))
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"what is {question}?"}]


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory):
    """Keep the datasets cache (TRL's precomputed reference log-probs land there too) out of the home folder."""
    import datasets

    cache = tmp_path_factory.mktemp("hf-datasets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
        mp.setenv("HF_DATASETS_CACHE", str(cache))  # for the entry-point subprocess
        yield cache


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer LlamaForCausalLM (hidden 64, 2 heads of 32) and a byte-level BPE tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<|start|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + ["system user assistant be brief"]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def _meta(i: int) -> dict:
    return {"prompt_id": f"p{i}", "domain": "instruction", "model": "src", "score_chosen": 0.5, "score_rejected": None}


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> str:
    """Eight good SFT rows and one bad one (ends with a user turn), with the analysis columns."""
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


@pytest.fixture(scope="module")
def dpo_file(tmp_path_factory) -> str:
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


FAST = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_strategy": "no",
    "gradient_checkpointing": False,  # nothing to save on a 2-layer model; it only slows the test
    "max_length": 128,
    "seed": 7,
}


def _weights(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _changed(before: dict, after: dict) -> list[str]:
    import torch

    return [k for k in before if not torch.equal(before[k], after[k])]


def test_sft_trains_saves_and_is_deterministic(tiny_model, sft_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.training import train_sft

    out1 = train_sft(tiny_model, [sft_file], str(tmp_path / "a"), dict(FAST))
    printed = capsys.readouterr().out
    assert "9 rows in, 8 rows out, 1 skipped" in printed
    assert "last message is not the assistant's" in printed

    before, after = _weights(tiny_model), _weights(out1)
    assert len(_changed(before, after)) > len(before) // 2  # a real update, not one stray tensor

    # Saved where vLLM / transformers load it, with the chat template.
    tok = AutoTokenizer.from_pretrained(out1)
    assert tok.chat_template == CHAT_TEMPLATE
    AutoModelForCausalLM.from_pretrained(out1)

    # Same seed, same data: the same weights, bit for bit, on CPU.
    out2 = train_sft(tiny_model, [sft_file], str(tmp_path / "b"), dict(FAST))
    assert not _changed(after, _weights(out2))


def test_sft_loss_mask_covers_only_the_completion(tiny_model, sft_file, tmp_path):
    from transformers import AutoTokenizer

    from fusechat3.training.data import load_parquet
    from fusechat3.training.sft import SFT_COLUMNS, build_sft_trainer, sft_config

    config = sft_config(dict(FAST), str(tmp_path / "out"))
    trainer = build_sft_trainer(tiny_model, load_parquet([sft_file], SFT_COLUMNS), config)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]

    tok = AutoTokenizer.from_pretrained(tiny_model)
    messages = _chat(0)
    prompt_len = len(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tok.decode(ids[prompt_len:]) == f"the sum is {WORDS[0]}<|end|>\n"


def test_dpo_sigmoid_norm_trains(tiny_model, dpo_file, tmp_path):
    from fusechat3.training.data import load_parquet
    from fusechat3.training.dpo import DPO_COLUMNS, dpo_config, run_dpo

    args = dict(
        FAST, loss_type=["sigmoid_norm"], beta=10.0, precompute_ref_log_probs=True, per_device_train_batch_size=2
    )
    config = dpo_config(args, str(tmp_path / "dpo"))
    assert config.loss_type == ["sigmoid_norm"]
    out = run_dpo(tiny_model, load_parquet([dpo_file], DPO_COLUMNS), config)

    assert len(_changed(_weights(tiny_model), _weights(out))) > 0
    # The policy starts equal to the (precomputed) reference: the first loss is -log σ(0) = log 2.
    losses = [h["loss"] for h in _trainer_log(out) if "loss" in h]
    assert losses and math.isclose(losses[0], math.log(2), abs_tol=1e-3)


def _trainer_log(output_dir: str) -> list[dict]:
    import json

    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def test_unknown_trl_key_names_the_closest(tmp_path):
    from fusechat3.recipe import RecipeError
    from fusechat3.training import train_dpo, train_sft

    # The model does not exist: the key check must come first.
    with pytest.raises(RecipeError, match=r"sft\.learning_rat: not a SFTConfig field; did you mean 'learning_rate'"):
        train_sft("no/such-model", ["none.parquet"], str(tmp_path), {"learning_rat": 1e-5})
    with pytest.raises(RecipeError, match=r"dpo\.los_type: .*did you mean 'loss_type'"):
        train_dpo("no/such-model", ["none.parquet"], str(tmp_path), {"los_type": ["sigmoid_norm"]})


def test_missing_column_names_the_file(tiny_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusechat3.schema import RowError
    from fusechat3.training import train_dpo

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": _chat(0), "chosen": [{"role": "assistant", "content": "x"}]}]), bad)
    with pytest.raises(RowError, match=r"bad\.parquet: missing column\(s\) \['rejected'\]"):
        train_dpo(tiny_model, [str(bad)], str(tmp_path / "out"), {})


def test_sft_entry_point(tiny_model, sft_file, tmp_path):
    out = tmp_path / "cli-out"
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model: {tiny_model}\ntrain_files: [{sft_file}]\noutput_dir: {out}\n"
        "sft:\n  max_steps: 1\n  logging_steps: 1\n  gradient_checkpointing: false\n  save_strategy: 'no'\n"
    )
    cmd = [sys.executable, "-m", "fusechat3.training.sft", "--config", str(config), "--set", "sft.learning_rate=5e-4"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert math.isclose(_trainer_log(str(out))[0]["learning_rate"], 5e-4)  # the --set override reached TRL


def test_entry_point_config_error_is_one_line(tmp_path, capsys):
    from fusechat3.training.sft import main

    config = tmp_path / "sft.yaml"
    config.write_text("model: m\ntrain_files: [x.parquet]\noutput_dir: o\nsft:\n  num_train_epoch: 3\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(config) in err and "sft.num_train_epoch" in err and "'num_train_epochs'" in err


def test_bad_rows_are_reasons_not_errors():
    from fusechat3.training.dpo import pair_problem
    from fusechat3.training.sft import conversation_problem

    user, answer = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    assert conversation_problem([user, answer]) == ""
    assert conversation_problem([answer]) == "no prompt before the response"
    assert conversation_problem([user, {"role": "assistant", "content": " "}]) == "empty response"
    assert conversation_problem([user, {"role": "assistant", "content": None}]).startswith("malformed message")
    assert conversation_problem([]) == "empty messages"

    pair = {"prompt": [user], "chosen": [answer], "rejected": [{"role": "assistant", "content": "bye"}]}
    assert pair_problem(pair) == ""
    assert pair_problem(pair | {"rejected": [answer]}) == "chosen equals rejected (no preference to learn)"
    assert pair_problem(pair | {"rejected": [user]}) == "rejected does not end with an assistant message"
    assert pair_problem(pair | {"prompt": []}) == "empty prompt"


def test_cpu_defaults():
    from fusechat3.training.config import device_defaults

    out = device_defaults({"bf16": True, "optim": "adamw_torch_fused", "report_to": "wandb"}, has_cuda=False)
    assert out["use_cpu"] is True and out["bf16"] is False and out["fp16"] is False
    assert out["optim"] == "adamw_torch" and out["report_to"] == "wandb"  # the user's tracker stays
    plain = device_defaults({}, has_cuda=False)
    assert plain["report_to"] == "none" and plain["optim"] == "adamw_torch" and plain["bf16"] is False
    assert device_defaults({"bf16": True, "optim": "adamw_torch_fused"}, has_cuda=True) == {
        "bf16": True,
        "optim": "adamw_torch_fused",
    }


def test_dataset_folder_keeps_only_trl_columns(sft_file, tmp_path):
    import shutil

    from fusechat3.schema import RowError
    from fusechat3.training.data import load_named_dataset
    from fusechat3.training.dpo import DPO_COLUMNS
    from fusechat3.training.sft import SFT_COLUMNS

    folder = tmp_path / "published"
    folder.mkdir()
    shutil.copy(sft_file, folder / "train-00000.parquet")
    ds = load_named_dataset(str(folder), "train", SFT_COLUMNS, "SFT")
    assert ds.column_names == ["messages"] and len(ds) == 9
    with pytest.raises(RowError, match=r"missing column\(s\) \['prompt', 'chosen', 'rejected'\]"):
        load_named_dataset(str(folder), "train", DPO_COLUMNS, "DPO")


def test_bad_model_path_is_one_line(sft_file, tmp_path):
    from fusechat3.recipe import RecipeError
    from fusechat3.training import train_sft

    with pytest.raises(RecipeError, match="cannot load its tokenizer"):
        train_sft(str(tmp_path / "no-model"), [sft_file], str(tmp_path / "out"), {})


def test_dpo_entry_point_with_dataset_folder_and_ref_model(tiny_model, dpo_file, tmp_path, capsys):
    import shutil

    from fusechat3.training.dpo import main

    folder = tmp_path / "pairs"
    folder.mkdir()
    shutil.copy(dpo_file, folder / "train-00000.parquet")
    out = tmp_path / "dpo-out"
    config = tmp_path / "dpo.yaml"
    config.write_text(
        f"model: {tiny_model}\nref_model: {tiny_model}\ndataset: {folder}\noutput_dir: {out}\n"
        "dpo:\n  max_steps: 1\n  loss_type: [sigmoid_norm]\n  beta: 10\n  gradient_checkpointing: false\n"
        "  save_strategy: 'no'\n  logging_steps: 1\n"
    )
    assert main(["--config", str(config)]) == 0, capsys.readouterr().err[-2000:]
    assert (out / "model.safetensors").is_file()
    # A separate reference model equal to the start: the first loss is log 2 as well.
    assert math.isclose(_trainer_log(str(out))[0]["loss"], math.log(2), abs_tol=1e-3)
