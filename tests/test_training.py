"""Tests of SFT and length-normalized DPO training: real TRL trainers on a tiny Llama built in tmp_path."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The tiny Llama (`tiny_llama`), its toy data (`sft_file`, `dpo_file`) and the datasets cache come from conftest.py.
pytestmark = pytest.mark.usefixtures("datasets_cache")


def _rows(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


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


@pytest.mark.integration
def test_sft_trains_saves_and_is_deterministic(tiny_llama, sft_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.training import train_sft

    out1 = train_sft(tiny_llama, [sft_file], str(tmp_path / "a"), dict(FAST))
    printed = capsys.readouterr().out
    assert "9 rows in, 8 rows out, 1 skipped" in printed
    assert "last message is not the assistant's" in printed

    before, after = _weights(tiny_llama), _weights(out1)
    assert len(_changed(before, after)) > len(before) // 2  # a real update, not one stray tensor

    # Saved where vLLM / transformers load it, with the chat template.
    tok = AutoTokenizer.from_pretrained(out1)
    assert tok.chat_template and tok.chat_template == AutoTokenizer.from_pretrained(tiny_llama).chat_template
    AutoModelForCausalLM.from_pretrained(out1)

    # Same seed, same data: the same weights, bit for bit, on CPU.
    out2 = train_sft(tiny_llama, [sft_file], str(tmp_path / "b"), dict(FAST))
    assert not _changed(after, _weights(out2))


def test_sft_loss_mask_covers_only_the_completion(tiny_llama, sft_file, tmp_path):
    from transformers import AutoTokenizer

    from fusechat3.training.data import load_parquet
    from fusechat3.training.sft import SFT_COLUMNS, build_sft_trainer, sft_config

    config = sft_config(dict(FAST), str(tmp_path / "out"))
    trainer = build_sft_trainer(tiny_llama, load_parquet([sft_file], SFT_COLUMNS), config)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    conversation = _rows(sft_file)[0]["messages"]
    messages, answer = conversation[:-1], conversation[-1]["content"]
    prompt_len = len(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tok.decode(ids[prompt_len:]) == f"{answer}<|end|>\n"


def _perturbed_copy(model_dir: str, out: Path) -> str:
    """`model_dir` with every weight scaled by 1 + 5% noise (seeded), and its tokenizer: a policy != the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return str(out)


def _completion_logp(model, tok, prompt: list[dict], completion: list[dict]) -> tuple[float, int]:
    """log π(completion | prompt) by hand on one unpadded sequence (chat template applied), and the token count."""
    import torch

    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full_ids = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)
    prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    token_logps = logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1 :]
    return token_logps.sum().item(), len(token_logps)


@pytest.mark.integration
def test_dpo_sigmoid_norm_trains(tiny_llama, dpo_file, tmp_path):
    """A short length-normalized DPO run learns; and the trainer's loss on a fixed batch, with a policy that
    differs from the reference, is -log σ(β/|y_w|·(logπθ−logπref)(y_w) − β/|y_l|·(logπθ−logπref)(y_l)) computed
    by hand from per-token log-probs, not the plain `sigmoid` loss (the same without the 1/|y| factors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.training.data import load_parquet
    from fusechat3.training.dpo import DPO, DPO_COLUMNS, build_dpo_trainer, dpo_config

    args = dict(
        FAST, loss_type=["sigmoid_norm"], beta=10.0, precompute_ref_log_probs=True, per_device_train_batch_size=2
    )
    config = dpo_config(args, str(tmp_path / "dpo"))
    assert config.loss_type == ["sigmoid_norm"]
    out = DPO.run(tiny_llama, load_parquet([dpo_file], DPO_COLUMNS), config)

    assert len(_changed(_weights(tiny_llama), _weights(out))) > 0
    # The policy starts equal to the (precomputed) reference: the first loss is -log σ(0) = log 2.
    logged = [h["loss"] for h in _trainer_log(out) if "loss" in h]
    assert logged and math.isclose(logged[0], math.log(2), abs_tol=1e-3)

    # The loss itself, on the first `n` rows as one batch, against a perturbed policy.
    beta, n = 2.0, 4
    policy = _perturbed_copy(tiny_llama, tmp_path / "policy")
    losses = {}
    for loss_type in ("sigmoid_norm", "sigmoid"):
        config = dpo_config(dict(FAST, loss_type=[loss_type], beta=beta), str(tmp_path / loss_type))
        trainer = build_dpo_trainer(policy, load_parquet([dpo_file], DPO_COLUMNS), config, ref_model=tiny_llama)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))
        trainer.model.eval()
        with torch.no_grad():
            losses[loss_type] = trainer.compute_loss(trainer.model, batch).item()

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    models = {
        name: AutoModelForCausalLM.from_pretrained(path).eval()
        for name, path in (("policy", policy), ("ref", tiny_llama))
    }
    expected = {"sigmoid_norm": 0.0, "sigmoid": 0.0}
    counts = []
    for row in _rows(dpo_file)[:n]:
        ratio, norm_ratio = {}, {}
        for side in ("chosen", "rejected"):
            logp, count = _completion_logp(models["policy"], tok, row["prompt"], row[side])
            ref_logp, _ = _completion_logp(models["ref"], tok, row["prompt"], row[side])
            ratio[side], norm_ratio[side] = logp - ref_logp, (logp - ref_logp) / count
            counts.append(count)
        for name, r in (("sigmoid_norm", norm_ratio), ("sigmoid", ratio)):
            z = beta * (r["chosen"] - r["rejected"])
            expected[name] += math.log1p(math.exp(-z)) / n  # -log σ(z)

    assert counts[0::2] != counts[1::2]  # chosen and rejected lengths differ: the 1/|y| factors matter
    assert abs(losses["sigmoid_norm"] - math.log(2)) > 1e-3  # the policy is not the reference
    assert abs(expected["sigmoid_norm"] - expected["sigmoid"]) > 1e-2
    assert losses["sigmoid_norm"] == pytest.approx(expected["sigmoid_norm"], abs=1e-5), (losses, expected)
    assert losses["sigmoid"] == pytest.approx(expected["sigmoid"], abs=1e-5), (losses, expected)


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


def test_missing_column_names_the_file(tiny_llama, dpo_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusechat3.schema import RowError
    from fusechat3.training import train_dpo

    bad = tmp_path / "bad.parquet"
    pair = _rows(dpo_file)[0]
    pq.write_table(pa.Table.from_pylist([{"prompt": pair["prompt"], "chosen": pair["chosen"]}]), bad)
    with pytest.raises(RowError, match=r"bad\.parquet: missing column\(s\) \['rejected'\]"):
        train_dpo(tiny_llama, [str(bad)], str(tmp_path / "out"), {})


@pytest.mark.integration
def test_sft_entry_point(tiny_llama, sft_file, tmp_path):
    out = tmp_path / "cli-out"
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model: {tiny_llama}\ntrain_files: [{sft_file}]\noutput_dir: {out}\n"
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


@pytest.mark.integration
def test_dpo_entry_point_with_dataset_folder_and_ref_model(tiny_llama, dpo_file, tmp_path, capsys):
    import shutil

    from fusechat3.training.dpo import main

    folder = tmp_path / "pairs"
    folder.mkdir()
    shutil.copy(dpo_file, folder / "train-00000.parquet")
    out = tmp_path / "dpo-out"
    config = tmp_path / "dpo.yaml"
    config.write_text(
        f"model: {tiny_llama}\nref_model: {tiny_llama}\ndataset: {folder}\noutput_dir: {out}\n"
        "dpo:\n  max_steps: 1\n  loss_type: [sigmoid_norm]\n  beta: 10\n  gradient_checkpointing: false\n"
        "  save_strategy: 'no'\n  logging_steps: 1\n"
    )
    assert main(["--config", str(config)]) == 0, capsys.readouterr().err[-2000:]
    assert (out / "model.safetensors").is_file()
    # A separate reference model equal to the start: the first loss is log 2 as well.
    assert math.isclose(_trainer_log(str(out))[0]["loss"], math.log(2), abs_tol=1e-3)
