"""Tests of WRPO training (fusechat3.training.wrpo): the trainer's loss against an independent computation
from the models' per-token log-probs, the α schedule, a short run that learns, precomputed and live
references, row and config errors, the entry point. All on the toy target, on CPU. (The WRPO recipes:
test_training_recipes.py and test_recipe_files.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

WORDS = "add sum reverse the list of numbers one two three four five six seven eight nine".split()


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def _row(i: int) -> dict:
    """One WRPO row in the build's layout: TRL's conversational columns plus analysis columns."""
    return {
        "prompt": [{"role": "user", "content": f"{_text(i, 4)} {i} {i + 2}"}],
        "chosen": [{"role": "assistant", "content": f"{i + 2} {_text(i + 3, 2)}"}],
        "rejected": [{"role": "assistant", "content": f"{_text(i + 7, 5)} {i * 3}"}],
        "source_chosen": [{"role": "assistant", "content": f"the sum is {2 * i + 2}"}],
        "prompt_id": f"p{i}",
        "domain": "instruction",
        "model": "src",
        "target_model": "target-own",
        "score_chosen": 0.5,
        "score_rejected": 0.1,
        "score_source_chosen": 0.9,
    }


FAST = {
    "per_device_train_batch_size": 4,
    "max_length": 128,
    "gradient_checkpointing": False,  # nothing to save on a 4-layer model; it only slows the test
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 7,
}


# The datasets cache (TRL's precomputed reference log-probs land there) comes from conftest.py.
pytestmark = pytest.mark.usefixtures("datasets_cache")


@pytest.fixture(scope="module")
def target() -> str:
    from fusechat3.recipe import resolve_model

    return resolve_model("toyworld:target")


@pytest.fixture(scope="module")
def wrpo_file(tmp_path_factory) -> str:
    """Eight good WRPO rows and one whose source response is empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_row(i) for i in range(8)]
    rows.append(_row(8) | {"source_chosen": [{"role": "assistant", "content": "  "}]})
    path = tmp_path_factory.mktemp("wrpo") / "wrpo-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _models(target: str, seed: int = 0):
    """(policy, reference): the toy target, and a copy of it with its weights perturbed, so that r(y) != 0."""
    import torch
    from transformers import AutoModelForCausalLM

    policy, reference = (AutoModelForCausalLM.from_pretrained(target) for _ in range(2))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=generator))
    return policy, reference


def _trainer(target: str, tmp_path: Path, args: dict, rows: list[dict], **kwargs):
    import datasets
    from transformers import AutoTokenizer

    from fusechat3.training.wrpo import WRPO_COLUMNS, wrpo_config
    from fusechat3.training.wrpo_trainer import WRPOTrainer

    config = wrpo_config(FAST | args, str(tmp_path / "out"))
    dataset = datasets.Dataset.from_list([{c: r[c] for c in WRPO_COLUMNS} for r in rows])
    return WRPOTrainer(
        args=config, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(target), **kwargs
    )


def _batch_loss(trainer, n: int = 4) -> float:
    """The trainer's loss on its first `n` rows (a fixed batch), in eval mode and without gradients."""
    import torch

    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def _hand_logps(model, tokenizer, prompt: list[dict], response: list[dict]) -> tuple[float, int]:
    """log π(response | prompt) by hand: log-softmax of one unpadded sequence, summed over the response tokens."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full_ids = tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)
    prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids  # the toy template renders the prompt the same way
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    token_logps = logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
    return token_logps[len(prompt_ids) - 1 :].sum().item(), len(full_ids) - len(prompt_ids)


@pytest.mark.parametrize(
    ("schedule", "normalize", "expected_alpha"),
    [("linear", False, 0.3 * 3 / 10), ("fixed", False, 0.3), ("linear", True, 0.3 * 3 / 10)],
)
def test_loss_matches_hand_computation(target, tmp_path, schedule, normalize, expected_alpha):
    from transformers import AutoTokenizer

    beta = 0.5
    policy, reference = _models(target)
    rows = [_row(i) for i in range(4)]
    args = {"beta": beta, "wrpo_alpha": 0.3, "wrpo_alpha_schedule": schedule, "wrpo_length_normalize": normalize}
    trainer = _trainer(target, tmp_path, args, rows, model=policy, ref_model=reference)
    trainer.state.global_step, trainer.state.max_steps = 3, 10  # step 3 of 10
    loss = _batch_loss(trainer)

    tokenizer = AutoTokenizer.from_pretrained(target)
    expected = 0.0
    for row in rows:
        r = {}
        for side in ("chosen", "source_chosen", "rejected"):
            logp, n = _hand_logps(policy, tokenizer, row["prompt"], row[side])
            ref_logp, _ = _hand_logps(reference, tokenizer, row["prompt"], row[side])
            r[side] = (logp - ref_logp) / (n if normalize else 1)
        mixed = expected_alpha * r["source_chosen"] + (1 - expected_alpha) * r["chosen"]
        z = beta * (mixed - r["rejected"])
        expected += math.log1p(math.exp(-z)) / len(rows)  # -log σ(z)

    assert abs(loss - math.log(2)) > 1e-3  # the perturbed policy is not the reference: the check has teeth
    assert abs(loss - expected) < 1e-5, (loss, expected)
    assert trainer._metrics["eval"]["wrpo/alpha"][-1] == pytest.approx(expected_alpha)


def test_alpha_schedule():
    from fusechat3.training.wrpo_trainer import wrpo_alpha

    assert wrpo_alpha(0.1, "linear", 0, 100) == 0.0
    assert wrpo_alpha(0.1, "linear", 50, 100) == pytest.approx(0.05)
    assert wrpo_alpha(0.1, "linear", 100, 100) == pytest.approx(0.1)
    assert wrpo_alpha(0.1, "linear", 130, 100) == pytest.approx(0.1)  # never past α
    assert wrpo_alpha(0.1, "linear", 5, 0) == 0.0  # no step count yet: the start of the schedule
    assert wrpo_alpha(0.1, "fixed", 0, 100) == wrpo_alpha(0.1, "fixed", 77, 100) == 0.1
    with pytest.raises(ValueError, match="choose one of"):
        wrpo_alpha(0.1, "cosine", 0, 10)


def test_config_defaults_and_errors(tmp_path):
    from fusechat3.recipe import RecipeError
    from fusechat3.training.wrpo import wrpo_config

    config = wrpo_config({}, str(tmp_path))
    assert (config.beta, config.wrpo_alpha, config.wrpo_alpha_schedule) == (0.01, 0.1, "linear")
    assert config.wrpo_length_normalize is False
    with pytest.raises(RecipeError, match=r"wrpo_alpha_schedule='cosine': choose one of \['linear', 'fixed'\]"):
        wrpo_config({"wrpo_alpha_schedule": "cosine"}, str(tmp_path))
    with pytest.raises(RecipeError, match=r"wrpo_alpha=1.5 must lie in \[0, 1\]"):
        wrpo_config({"wrpo_alpha": 1.5}, str(tmp_path))
    with pytest.raises(RecipeError, match="loss_type=.*WRPO does not use.*wrpo_length_normalize"):
        wrpo_config({"loss_type": ["sigmoid_norm"]}, str(tmp_path))
    with pytest.raises(RecipeError, match=r"wrpo\.wrpo_alph: not a WRPOConfig field; did you mean 'wrpo_alpha'"):
        wrpo_config({"wrpo_alph": 0.2}, str(tmp_path))


@pytest.mark.integration
def test_short_run_learns(target, wrpo_file, tmp_path):
    import torch

    from fusechat3.training.data import load_parquet
    from fusechat3.training.wrpo import WRPO_COLUMNS, build_wrpo_trainer, wrpo_config

    steps, alpha = 20, 0.5
    args = FAST | {"max_steps": steps, "learning_rate": 1e-3, "beta": 0.1, "wrpo_alpha": alpha}
    config = wrpo_config(args | {"precompute_ref_log_probs": True}, str(tmp_path / "out"))
    trainer = build_wrpo_trainer(target, load_parquet([wrpo_file], WRPO_COLUMNS), config)
    assert len(trainer.train_dataset[0]["ref_chosen_logps"]) == 2  # the chosen side: (target, source)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss_before = _batch_loss(trainer)
    assert loss_before == pytest.approx(math.log(2), abs=1e-5)  # policy = reference: -log σ(0)

    trainer.train()
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2  # a real update, not one stray tensor
    loss_after = _batch_loss(trainer)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)

    # α_t as logged: the step's α at global step 0, 1, ..., steps - 1.
    logged = [h["wrpo/alpha"] for h in trainer.state.log_history if "wrpo/alpha" in h and "loss" in h]
    assert logged == pytest.approx([alpha * s / steps for s in range(steps)])
    accuracy = [h["rewards/accuracies"] for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert accuracy[-1] > 0.5


def test_precomputed_and_live_reference_agree(target, tmp_path):
    rows = [_row(i) for i in range(4)]
    losses = {}
    for precompute in (True, False):
        policy, reference = _models(target)
        args = {"beta": 0.5, "wrpo_alpha": 0.3, "wrpo_alpha_schedule": "fixed", "precompute_ref_log_probs": precompute}
        trainer = _trainer(target, tmp_path / str(precompute), args, rows, model=policy, ref_model=reference)
        assert ("ref_chosen_logps" in trainer.train_dataset.column_names) is precompute
        losses[precompute] = _batch_loss(trainer)
    assert abs(losses[True] - math.log(2)) > 1e-3
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_bad_rows_are_counted_reasons():
    from fusechat3.training.wrpo import triplet_problem

    good = _row(0)
    assert triplet_problem(good) == ""
    assert triplet_problem(good | {"source_chosen": [{"role": "assistant", "content": " "}]}) == (
        "empty source_chosen response"
    )
    assert triplet_problem(good | {"source_chosen": good["rejected"]}) == (
        "source_chosen equals rejected (no preference to learn)"
    )
    assert triplet_problem(good | {"source_chosen": good["prompt"]}) == (
        "source_chosen does not end with an assistant message"
    )
    assert triplet_problem(good | {"source_chosen": []}) == "empty source_chosen"
    assert triplet_problem(good | {"chosen": good["rejected"]}) == "chosen equals rejected (no preference to learn)"


def test_missing_source_chosen_is_one_clear_error(target, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusechat3.schema import RowError
    from fusechat3.training import train_wrpo

    bad = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in _row(0).items() if k != "source_chosen"}]), bad)
    with pytest.raises(RowError, match=r"pairs\.parquet: missing column\(s\) \['source_chosen'\]"):
        train_wrpo(target, [str(bad)], str(tmp_path / "out"), {})
    # The trainer itself, given a DPO dataset: one line naming the column.
    with pytest.raises(ValueError, match=r"^train dataset: missing column\(s\) \['source_chosen'\]"):
        _dpo_only_trainer(target, tmp_path)


def _dpo_only_trainer(target: str, tmp_path: Path):
    import datasets
    from transformers import AutoTokenizer

    from fusechat3.training.wrpo import wrpo_config
    from fusechat3.training.wrpo_trainer import WRPOTrainer

    rows = [{c: _row(i)[c] for c in ("prompt", "chosen", "rejected")} for i in range(2)]
    return WRPOTrainer(
        model=target,
        args=wrpo_config(FAST, str(tmp_path / "dpo-only")),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(target),
    )


@pytest.mark.integration
def test_entry_point_trains_counts_bad_rows_and_takes_overrides(target, wrpo_file, tmp_path, capsys):
    import json

    from fusechat3.training.wrpo import main

    out = tmp_path / "cli-out"
    config = tmp_path / "wrpo.yaml"
    config.write_text(
        f"model: toyworld:target\ntrain_files: [{wrpo_file}]\noutput_dir: {out}\n"
        "wrpo:\n  max_steps: 1\n  logging_steps: 1\n  gradient_checkpointing: false\n  save_strategy: 'no'\n"
        "  precompute_ref_log_probs: true\n"
    )
    code = main(["--config", str(config), "--set", "wrpo.wrpo_alpha_schedule=fixed", "--set", "wrpo.wrpo_alpha=0.2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "9 rows in, 8 rows out, 1 skipped" in captured.out and "empty source_chosen response" in captured.out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert log[0]["wrpo/alpha"] == pytest.approx(0.2)  # the --set overrides reached the trainer
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # first step: policy = reference


def test_entry_point_config_error_is_one_line(tmp_path, capsys):
    from fusechat3.training.wrpo import main

    config = tmp_path / "wrpo.yaml"
    config.write_text("model: m\ntrain_files: [x.parquet]\noutput_dir: o\nwrpo:\n  wrpo_alpha_shedule: fixed\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(config) in err and "wrpo.wrpo_alpha_shedule" in err and "'wrpo_alpha_schedule'" in err


def test_source_tokenization_uses_one_prompt_for_all_three(target):
    """When prompt+source diverges from the tokenized prompt early, the row's prompt is cut there for all three
    completions (TRL's completion-start rule), and the cut-off prompt tokens start each completion."""
    from transformers import AutoTokenizer

    from fusechat3.training.wrpo_trainer import _tokenize_source

    tokenizer = AutoTokenizer.from_pretrained(target)
    row = _row(1)
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["source_chosen"], tokenize=True, return_dict=True)
    prompt, full = prompt["input_ids"], full["input_ids"]

    same = _tokenize_source(row | {"prompt_ids": prompt, "chosen_ids": [5], "rejected_ids": [6]}, tokenizer)
    assert same == {
        "prompt_ids": prompt,
        "chosen_ids": [5],
        "rejected_ids": [6],
        "source_chosen_ids": full[len(prompt) :],
    }

    # A prompt whose last token the source's rendering does not share (e.g. a template quirk).
    odd = prompt[:-1] + [tokenizer.pad_token_id]
    cut = _tokenize_source(row | {"prompt_ids": odd, "chosen_ids": [5], "rejected_ids": [6]}, tokenizer)
    assert cut["prompt_ids"] == prompt[:-1]
    assert cut["chosen_ids"] == [tokenizer.pad_token_id, 5] and cut["rejected_ids"] == [tokenizer.pad_token_id, 6]
    assert cut["source_chosen_ids"] == full[len(prompt) - 1 :]


@pytest.mark.integration
def test_lora_run_with_live_reference_and_checkpoint_choice(target, wrpo_file, tmp_path):
    """LoRA: the reference is the policy with its adapter off (live); the better of the last two checkpoints wins."""
    import json

    import torch
    from safetensors.torch import load_file

    from fusechat3.training import train_wrpo

    out = tmp_path / "lora"
    args = FAST | {"max_steps": 4, "learning_rate": 1e-2, "beta": 0.1, "save_strategy": "steps", "save_steps": 2}
    peft = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    select = {"metric": "rewards/accuracies", "last": 2}
    train_wrpo(target, [wrpo_file], str(out), args, eval_files=[wrpo_file], peft=peft, select_checkpoint=select)

    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # a fresh adapter: policy = reference
    choice = json.loads((out / "checkpoint_choice.json").read_text())
    assert [c["step"] for c in choice["candidates"]] == [2, 4]
    assert choice["chosen"] in ("checkpoint-2", "checkpoint-4")
    before, after = load_file(f"{target}/model.safetensors"), load_file(str(out / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # merged: only the adapted layers


@pytest.mark.integration
def test_resume_continues_the_alpha_schedule(target, wrpo_file, tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from fusechat3.training import train_wrpo

    out = tmp_path / "resume"
    args = FAST | {"max_steps": 4, "learning_rate": 1e-3, "wrpo_alpha": 0.4, "save_strategy": "steps", "save_steps": 2}
    train_wrpo(target, [wrpo_file], str(out), args)
    straight = load_file(str(out / "model.safetensors"))

    train_wrpo(target, [wrpo_file], str(out), args | {"resume_from_checkpoint": str(out / "checkpoint-2")})
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in log if "loss" in h]  # steps 1-2 from checkpoint-2's state, 3-4 from the resumed run
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    assert [h["wrpo/alpha"] for h in steps] == pytest.approx([0.0, 0.1, 0.2, 0.3])  # α_t = 0.4 * step / 4
    resumed = load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)  # the same run, resumed
