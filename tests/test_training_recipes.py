"""Tests of the training recipes and of what every trainer shares: learning on toy data, LoRA, resuming,
the paper's checkpoint choice, and `fusechat3 sft|dpo|wrpo <training config>`.

Real TRL trainers on the tiny Llama of conftest.py; losses are computed by hand from the
model's log-probs, not read from the trainer's logs.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

# The tiny Llama (`tiny_llama`), its toy data (`sft_file`, `dpo_file`) and the datasets cache come from conftest.py.
pytestmark = pytest.mark.usefixtures("datasets_cache")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

# The FuseChat-3.0 paper's hyperparameters (arXiv 2503.04222): SFT lr; DPO loss, beta, lr.
PAPER = {
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", 5e-6, "sigmoid_norm", 10.0, 8e-7),
    "llama-3.2-3b": ("meta-llama/Llama-3.2-3B-Instruct", 5e-6, "sigmoid_norm", 10.0, 1e-6),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B-Instruct", 5e-6, "sigmoid_norm", 10.0, 1e-6),
    "qwen-2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", 2e-6, "sigmoid", 0.01, 3e-7),
    "gemma-2-9b": ("google/gemma-2-9b-it", 2e-6, "sigmoid", 0.01, 5e-7),
}
GPUS = 8  # the recipes' global batch assumes one node of 8 GPUs

TOY = {
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "save_strategy": "no",
    "gradient_checkpointing": False,
    "max_length": 128,
    "seed": 7,
}


# --------------------------------------------------------------------------- helpers


def _weights(path: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _changed(before: dict, after: dict) -> list[str]:
    import torch

    return [k for k in before if not torch.equal(before[k], after[k])]


def _log(output_dir: str | Path) -> list[dict]:
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def _model(path: str | Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _completion_logp(model, tok, prompt: list[dict], completion: list[dict]) -> tuple:
    """Sum of the completion tokens' log-probs given the prompt (chat template applied), and their count."""
    import torch

    ids_prompt = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids_full = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)
    p, full = ids_prompt["input_ids"], ids_full["input_ids"]
    assert full[: len(p)] == p
    x = torch.tensor([full])
    with torch.no_grad():
        logp = model(x).logits[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0]
    completion_logp = logp[len(p) - 1 :]
    return completion_logp.sum().item(), len(completion_logp)


def _sft_loss(model, tok, rows: list[dict]) -> float:
    """Mean per-token NLL of the responses (loss on the assistant turn only, as SFT trains)."""
    losses = []
    for r in rows:
        total, n = _completion_logp(model, tok, r["messages"][:-1], r["messages"][-1:])
        losses.append(-total / n)
    return sum(losses) / len(losses)


def _norm_dpo_loss(policy, ref, tok, rows: list[dict], beta: float) -> float:
    """The length-normalized DPO loss, -log σ(β/|y_w|·Δ_w − β/|y_l|·Δ_l), averaged over `rows`."""
    losses = []
    for r in rows:
        margins = []
        for side in ("chosen", "rejected"):
            lp, n = _completion_logp(policy, tok, r["prompt"], r[side])
            lr, _ = _completion_logp(ref, tok, r["prompt"], r[side])
            margins.append((lp - lr) / n)
        z = beta * (margins[0] - margins[1])
        losses.append(math.log1p(math.exp(-z)))
    return sum(losses) / len(losses)


def _rows(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- recipes


def _training_recipes() -> list[Path]:
    return sorted(RECIPES.glob("fusechat3/*/sft.yaml")) + sorted(RECIPES.glob("fusechat3/*/dpo.yaml"))


def test_every_target_has_both_recipes():
    targets = {p.name for p in (RECIPES / "fusechat3").iterdir() if p.is_dir()}
    assert targets == set(PAPER)
    for target in PAPER:
        assert (RECIPES / "fusechat3" / target / "sft.yaml").is_file()
        assert (RECIPES / "fusechat3" / target / "dpo.yaml").is_file()


@pytest.mark.parametrize("path", _training_recipes(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads_into_trl_config_with_paper_values(path, tmp_path):
    from trl import DPOConfig, SFTConfig

    from fusechat3.training.config import load_run_config
    from fusechat3.training.dpo import DPO, dpo_config
    from fusechat3.training.sft import SFT, sft_config

    hub_id, sft_lr, loss, beta, dpo_lr = PAPER[path.parent.name]
    kind = path.stem
    if kind == "sft":
        rc = load_run_config(str(path), "sft", SFTConfig)
        config = sft_config(rc.args, rc.output_dir)
        assert rc.model == hub_id
        assert config.learning_rate == sft_lr and config.num_train_epochs == 3
        assert config.completion_only_loss is True
        build_options = SFT.options
    else:
        rc = load_run_config(str(path), "dpo", DPOConfig, extra_keys=("ref_model",))
        config = dpo_config(rc.args, rc.output_dir)
        assert rc.model == f"runs/fusechat3-{path.parent.name}/sft-model"
        assert config.loss_type == [loss] and config.beta == beta and config.learning_rate == dpo_lr
        assert config.num_train_epochs == 1 and config.precompute_ref_log_probs is True
        build_options = DPO.options
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps * GPUS == 128
    assert config.max_length == 2048 and config.lr_scheduler_type == "cosine" and config.warmup_steps == 0.1
    if path.parent.name.startswith("gemma"):
        assert config.model_init_kwargs == {"attn_implementation": "eager"}

    # The commented-out checkpoint choice and LoRA work once turned on, with the recipe's save settings.
    metric = "eval_loss" if kind == "sft" else "eval_rewards/accuracies"
    overrides = [
        "eval_files=[heldout.parquet]",
        f"select_checkpoint.metric={metric}",
        "peft.r=16",
        "peft.target_modules=all-linear",
    ]
    extra = ("ref_model",) if kind == "dpo" else ()
    rc = load_run_config(str(path), kind, SFTConfig if kind == "sft" else DPOConfig, overrides, extra_keys=extra)
    options = build_options(config, rc.peft, rc.select_checkpoint, has_eval=rc.has_eval)
    assert options.select.metric == metric and options.select.last == 2
    assert options.select.greater_is_better is (kind == "dpo")
    assert options.peft_config.r == 16 and options.merge_adapter is True


@pytest.mark.parametrize("name", ["llama-3.1-8b", "toyworld"])
def test_wrpo_recipes_load_into_the_wrpo_config(name, tmp_path):
    from fusechat3.training.config import load_run_config
    from fusechat3.training.wrpo import wrpo_config
    from fusechat3.training.wrpo_trainer import WRPOConfig

    path = RECIPES / "wrpo" / f"{name}.yaml"
    rc = load_run_config(str(path), "wrpo", WRPOConfig, extra_keys=("ref_model",))
    config = wrpo_config(rc.args, str(tmp_path))
    assert isinstance(config, WRPOConfig) and config.beta == rc.args["beta"]
    assert rc.train_files and rc.train_files[0].endswith("build/wrpo.parquet")
    assert config.wrpo_alpha == 0.1 and config.wrpo_alpha_schedule == "linear"
    assert config.precompute_ref_log_probs is True
    if path.stem != "toyworld":  # the paper's settings (the toy recipe scales beta and lr to the toy model)
        assert (config.beta, config.learning_rate, config.num_train_epochs, config.max_length) == (0.01, 3e-7, 1, 2048)
        assert config.lr_scheduler_type == "cosine" and config.warmup_steps == 0.1


ACCELERATE = {
    "single_gpu": ("NO", 1),
    "multi_gpu": ("MULTI_GPU", 8),
    "zero3": ("DEEPSPEED", 8),
    "fsdp2": ("FSDP", 8),
}


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_configs_have_the_expected_values(name):
    """Their loading is checked with every recipe file (test_recipe_files.py); here what each is for."""
    assert sorted(p.stem for p in (RECIPES / "accelerate").glob("*.yaml")) == sorted(ACCELERATE)
    raw = yaml.safe_load((RECIPES / "accelerate" / f"{name}.yaml").read_text())
    distributed, processes = ACCELERATE[name]
    assert raw["distributed_type"] == distributed and raw["num_processes"] == processes
    assert raw["mixed_precision"] == "bf16" and raw["num_machines"] == 1
    if name == "zero3":
        assert raw["deepspeed_config"]["zero_stage"] == 3 and raw["deepspeed_config"]["zero3_save_16bit_model"]
    if name == "fsdp2":
        assert raw["fsdp_config"]["fsdp_version"] == 2
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# --------------------------------------------------------------------------- learning


@pytest.mark.integration
def test_sft_twenty_steps_lowers_the_loss_on_a_fixed_batch(tiny_llama, sft_file, tmp_path):
    from transformers import AutoTokenizer

    from fusechat3.training import train_sft

    rows = [r for r in _rows(sft_file) if r["messages"][-1]["role"] == "assistant"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    before = _sft_loss(_model(tiny_llama), tok, rows)

    out = train_sft(tiny_llama, [sft_file], str(tmp_path / "sft"), dict(TOY, max_steps=20))

    after = _sft_loss(_model(out), tok, rows)
    assert len(_changed(_weights(tiny_llama), _weights(out))) == len(_weights(tiny_llama))  # every tensor moved
    assert after < 0.7 * before, (before, after)


@pytest.mark.integration
def test_dpo_twenty_steps_lowers_the_loss_and_keeps_the_better_checkpoint(tiny_llama, dpo_file, tmp_path):
    from transformers import AutoTokenizer

    from fusechat3.training import train_dpo

    rows = _rows(dpo_file)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ref = _model(tiny_llama)
    assert math.isclose(_norm_dpo_loss(ref, ref, tok, rows, beta=10.0), math.log(2), abs_tol=1e-9)

    args = dict(
        TOY,
        max_steps=20,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        loss_type=["sigmoid_norm"],
        beta=10.0,
        precompute_ref_log_probs=True,
        save_strategy="steps",
        save_steps=10,
    )
    out = Path(tmp_path / "dpo")
    select = {"metric": "rewards/accuracies", "last": 2}
    train_dpo(tiny_llama, [dpo_file], str(out), args, eval_files=[dpo_file], select_checkpoint=select)

    after = _norm_dpo_loss(_model(out), ref, tok, rows, beta=10.0)
    assert after < math.log(2) - 0.05, after
    assert _changed(_weights(tiny_llama), _weights(out))

    # The paper's choice: the better of the last two checkpoints on held-out pairs, recorded.
    record = json.loads((out / "checkpoint_choice.json").read_text())
    assert record["metric"] == "eval_rewards/accuracies" and record["greater_is_better"] is True
    assert [c["checkpoint"] for c in record["candidates"]] == ["checkpoint-10", "checkpoint-20"]
    values = [c["value"] for c in record["candidates"]]
    assert all(0.0 <= v <= 1.0 for v in values)
    expected = "checkpoint-20" if values[1] >= values[0] else "checkpoint-10"  # a tie keeps the later one
    assert record["chosen"] == expected
    assert not _changed(_weights(out / expected), _weights(out))  # the final model is that checkpoint


@pytest.mark.integration
def test_checkpoint_choice_picks_the_known_better(tiny_llama, sft_file, tmp_path):
    """Two checkpoints, one of them replaced by the untrained model: the trained one must win, either way round."""
    from fusechat3.training.checkpoints import SelectCheckpoint, choose_checkpoint
    from fusechat3.training.data import load_parquet
    from fusechat3.training.sft import SFT_COLUMNS, build_sft_trainer, sft_config

    out = tmp_path / "choice"
    config = sft_config(dict(TOY, max_steps=8, save_strategy="steps", save_steps=4), str(out))
    data = load_parquet([sft_file], SFT_COLUMNS)
    trainer = build_sft_trainer(tiny_llama, data, config, eval_dataset=data)
    trainer.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    untrained = Path(tiny_llama) / "model.safetensors"
    trained8 = out / "trained-8.safetensors"
    shutil.copy(out / "checkpoint-8" / "model.safetensors", trained8)

    def model_state() -> dict:
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    # checkpoint-8 is the untrained model: checkpoint-4 wins, by loss (lower) and by token accuracy (higher).
    shutil.copy(untrained, out / "checkpoint-8" / "model.safetensors")
    for metric in ("eval_loss", "eval_mean_token_accuracy"):
        select = SelectCheckpoint(metric=metric, greater_is_better=metric != "eval_loss")
        record = choose_checkpoint(trainer, select)
        assert record["chosen"] == "checkpoint-4", record
        assert not _changed(_weights(out / "checkpoint-4"), model_state())
    written = json.loads((out / "checkpoint_choice.json").read_text())
    assert written["chosen"] == "checkpoint-4" and written["metric"] == "eval_mean_token_accuracy"

    # The other way round: checkpoint-4 untrained, checkpoint-8 trained again.
    shutil.copy(untrained, out / "checkpoint-4" / "model.safetensors")
    shutil.copy(trained8, out / "checkpoint-8" / "model.safetensors")
    record = choose_checkpoint(trainer, SelectCheckpoint())
    assert record["chosen"] == "checkpoint-8"
    losses = {c["checkpoint"]: c["value"] for c in record["candidates"]}
    assert losses["checkpoint-8"] < losses["checkpoint-4"]
    assert not _changed(_weights(out / "checkpoint-8"), model_state())


@pytest.mark.integration
def test_lora_sft_trains_the_adapter_and_saves_a_merged_model(tiny_llama, sft_file, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from fusechat3.training import train_sft

    peft = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    out = Path(train_sft(tiny_llama, [sft_file], str(tmp_path / "lora"), dict(TOY, max_steps=6), peft=peft))

    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: the adapter was trained

    base, merged = _weights(tiny_llama), _weights(out)
    assert set(base) == set(merged)  # a plain checkpoint, no adapter keys
    changed = set(_changed(base, merged))
    assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed)
    # The merged model computes what base + adapter computes.
    x = torch.tensor([[3, 17, 42, 99, 5, 250]])
    with torch.no_grad():
        merged_logits = _model(out)(x).logits
        adapter_logits = PeftModel.from_pretrained(_model(tiny_llama), str(out / "adapter")).eval()(x).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)

    # merge: false keeps only the adapter (for vLLM's --enable-lora, or more training).
    kept = Path(
        train_sft(tiny_llama, [sft_file], str(tmp_path / "kept"), dict(TOY, max_steps=1), peft=peft | {"merge": False})
    )
    assert (kept / "adapter_config.json").is_file() and not (kept / "model.safetensors").exists()


@pytest.mark.integration
def test_resume_continues_where_the_run_stopped(tiny_llama, sft_file, tmp_path):
    from fusechat3.training import train_sft

    args = dict(TOY, save_strategy="steps", save_steps=2)
    stopped = tmp_path / "stopped"
    train_sft(tiny_llama, [sft_file], str(stopped), dict(args, max_steps=4))  # "killed" after step 4
    assert (stopped / "checkpoint-4").is_dir()
    # A mark in the checkpoint's state: a resumed run carries it on, a run that started over would not.
    state_file = stopped / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][-1]["mark"] = "from checkpoint-4"
    state_file.write_text(json.dumps(state))
    train_sft(tiny_llama, [sft_file], str(stopped), dict(args, max_steps=8, resume_from_checkpoint=True))
    straight = train_sft(tiny_llama, [sft_file], str(tmp_path / "straight"), dict(args, max_steps=8))

    resumed_log = [h for h in _log(stopped) if "loss" in h]
    straight_log = [h for h in _log(straight) if "loss" in h]
    assert [h["step"] for h in resumed_log] == list(range(1, 9))
    assert resumed_log[3].get("mark") == "from checkpoint-4"
    assert json.loads((stopped / "trainer_state.json").read_text())["global_step"] == 8
    for a, b in zip(resumed_log, straight_log, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a, b)
    after_resume, uninterrupted = _weights(stopped), _weights(straight)
    for k in uninterrupted:
        assert (after_resume[k] - uninterrupted[k]).abs().max() < 1e-4, k


# --------------------------------------------------------------------------- errors


def test_option_mistakes_are_one_clear_line(tmp_path, sft_file):
    from fusechat3.recipe import RecipeError
    from fusechat3.training import train_dpo, train_sft

    steps = {"save_strategy": "steps", "save_steps": 10}
    # The model does not exist: every one of these is caught before anything is loaded.
    cases = [
        ({"peft": {"rr": 8}}, {}, r"peft\.rr: not a LoraConfig field; did you mean 'r'\?"),
        ({"peft": {"merge": "yes"}}, {}, r"peft\.merge: must be true"),
        ({"select_checkpoint": {"metric": "eval_loss"}}, steps, r"select_checkpoint: needs held-out data"),
        (
            {"select_checkpoint": {"metirc": "eval_loss"}},
            steps,
            r"unknown key 'select_checkpoint\.metirc' \(did you mean 'metric'\?\)",
        ),
        (
            {"select_checkpoint": {"last": 2}, "eval_files": [sft_file]},
            steps | {"save_total_limit": 1},
            r"save_total_limit to 2 or more",
        ),
        (
            {"select_checkpoint": {"last": 2}, "eval_files": [sft_file]},
            {"save_strategy": "no"},
            r"needs checkpoints to choose from",
        ),
        (
            {"select_checkpoint": {"metric": "rewards/accuracies"}, "eval_files": [sft_file]},
            steps,
            r"'eval_rewards/accuracies' is not a metric of this trainer",
        ),
        ({}, {"resume_from_checkpoint": True}, r"resume_from_checkpoint: true, but .* has no checkpoint"),
        ({}, {"resume_from_checkpoint": str(tmp_path / "nope")}, r"is not a folder"),
    ]
    for kwargs, args, message in cases:
        with pytest.raises(RecipeError, match=message):
            train_sft("no/such-model", [sft_file], str(tmp_path / "out"), args, **kwargs)
    with pytest.raises(RecipeError, match=r"'eval_mean_token_accuracy' is not a metric of this trainer"):
        train_dpo(
            "no/such-model",
            [sft_file],
            str(tmp_path / "out"),
            steps,
            eval_files=[sft_file],
            select_checkpoint={"metric": "mean_token_accuracy"},
        )


def test_config_file_option_mistake_names_the_file(tmp_path, capsys):
    from fusechat3.training.sft import main

    config = tmp_path / "sft.yaml"
    config.write_text("model: m\ntrain_files: [x.parquet]\noutput_dir: o\npeft: {lora_alpah: 16}\nsft: {}\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(config) in err and "peft.lora_alpah" in err and "'lora_alpha'" in err


# --------------------------------------------------------------------------- the fusechat3 command


def test_is_training_config_tells_configs_from_run_recipes(tmp_path):
    from fusechat3.training.config import is_training_config

    assert is_training_config(str(RECIPES / "fusechat3" / "llama-3.1-8b" / "sft.yaml"), "sft")
    assert is_training_config(str(RECIPES / "fusechat3" / "llama-3.1-8b" / "dpo.yaml"), "dpo")
    assert not is_training_config(str(RECIPES / "fusechat3" / "llama-3.1-8b" / "dpo.yaml"), "sft")
    wrpo = RECIPES / "wrpo" / "llama-3.1-8b.yaml"
    assert is_training_config(str(wrpo), "wrpo") or not wrpo.exists()
    assert not is_training_config(str(RECIPES / "toyworld" / "imf.yaml"), "sft")  # a run recipe: the stage
    assert not is_training_config(str(tmp_path / "missing.yaml"), "sft")


@pytest.mark.integration
def test_cli_sft_on_a_training_config_is_the_entry_point(tiny_llama, sft_file, tmp_path, capsys):
    from fusechat3.cli import main as cli_main
    from fusechat3.training.sft import main as sft_main

    def config(out: Path) -> Path:
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(
            f"model: {tiny_llama}\ntrain_files: [{sft_file}]\noutput_dir: {out}\n"
            "sft:\n  max_steps: 2\n  logging_steps: 1\n  gradient_checkpointing: false\n  save_strategy: 'no'\n"
            "  seed: 3\n"
        )
        return path

    via_cli, via_module = tmp_path / "cli", tmp_path / "module"
    assert cli_main(["sft", str(config(via_cli)), "--set", "sft.learning_rate=5e-4"]) == 0, capsys.readouterr().err
    assert sft_main(["--config", str(config(via_module)), "--set", "sft.learning_rate=5e-4"]) == 0
    assert math.isclose(_log(via_cli)[0]["learning_rate"], 5e-4)  # the --set override reached TRL
    assert not _changed(_weights(via_module), _weights(via_cli))  # the same training, bit for bit


def test_cli_wrpo_on_a_recipe_without_wrpo_is_one_line(capsys):
    from fusechat3.cli import main

    assert main(["wrpo", str(RECIPES / "toyworld" / "imf.yaml"), "--set", "wrpo=null"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stage 'wrpo' is off: the recipe has no `wrpo:` section" in err
