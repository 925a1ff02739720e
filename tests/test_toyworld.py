"""The toy world: deterministic tasks, disjoint evaluation prompts, and shipped models of
different architectures and tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_builders import get_builder, run_builder
from fusechat3.recipe import resolve_model
from fusechat3.toyworld import tasks as T

SOURCES = ("mistral-math", "qwen2-code", "gpt2-chat")


def test_tasks_are_deterministic_and_checkable():
    a = T.split_tasks("code", 20, "fusion")
    b = T.split_tasks("code", 20, "fusion")
    assert [t.prompt for t in a] == [t.prompt for t in b]
    for t in a:  # the ideal response passes its own tests
        env: dict = {}
        exec(t.response.strip("`").removeprefix("python\n"), env)
        for test in t.tests:
            exec(test, env)
    assert (
        T.zh_number(47) == "四十七"
        and T.zh_number(10) == "十"
        and T.zh_number(15) == "十五"
        and T.zh_number(90) == "九十"
    )


def test_eval_prompts_are_kept_out_of_every_other_pool():
    held_out = T.eval_prompts()
    for domain in T.FAMILIES:
        fusion = {t.prompt for t in T.split_tasks(domain, 200 if domain == "zh" else 300, "fusion")}
        pretrain = {t.prompt for t in T.split_tasks(domain, 2000, "pretrain")}
        assert not (fusion | pretrain) & held_out, domain


def test_builder_rows_and_errors():
    rows = run_builder("toyworld", {"split": "eval", "per_domain": 5})
    assert len(rows) == 20 and {r["domain"] for r in rows} == set(T.FAMILIES)
    assert all(r["gold"] for r in rows if r["domain"] == "math")
    assert all(r["tests"] for r in rows if r["domain"] == "code")
    with pytest.raises(ValueError, match="did you mean 'toyworld'"):
        get_builder("toyword")
    with pytest.raises(ValueError, match="did you mean 'per_domain'"):
        run_builder("toyworld", {"per_domian": 3})


def test_shipped_models_differ_in_architecture_and_tokenizer():
    from transformers import AutoConfig, AutoTokenizer

    archs, vocabs, templates = set(), set(), set()
    for name in (*SOURCES, "target"):
        path = resolve_model(f"toyworld:{name}")
        cfg = AutoConfig.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert cfg.hidden_size // cfg.num_attention_heads >= 32  # vLLM on CPU
        archs.add(cfg.architectures[0])
        vocabs.add(json.dumps(tok.get_vocab(), sort_keys=True))
        templates.add(tok.chat_template)
    assert len(archs) == 4 and len(vocabs) == 4 and len(templates) == 4
    reward = AutoConfig.from_pretrained(resolve_model("toyworld:reward"))
    assert reward.architectures[0].endswith("ForSequenceClassification") and reward.num_labels == 1


def test_assets_are_small():
    assets = Path(resolve_model("toyworld:target")).parent
    total = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    assert total < 30 * 2**20, total


def test_build_rejects_unknown_model(tmp_path):
    from fusechat3.toyworld.build import build

    with pytest.raises(ValueError, match="unknown model"):
        build(tmp_path, only=["no-such-model"])


def test_build_trains_and_saves_loadable_models(tmp_path):
    """The real build path (worker processes, tokenizer as served, save) on two tiny specs."""
    import dataclasses

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from fusechat3.toyworld.build import REWARD_SPEC, SPECS, Learn, build

    tiny = [
        dataclasses.replace(SPECS[1], steps=3, data={"code": Learn(None, 40), "zh": Learn(("num",), 20, 0.5)}),
        dataclasses.replace(REWARD_SPEC, steps=3, data={"instruction": Learn(None, 40)}),
    ]
    build(tmp_path, specs=tiny, jobs=2, log=lambda *_: None)
    lm = tmp_path / "qwen2-code"
    tok = AutoTokenizer.from_pretrained(lm)
    assert tok.chat_template and AutoModelForCausalLM.from_pretrained(lm).config.model_type == "qwen2"
    card = json.loads((lm / "toyworld.json").read_text())
    assert card["spec"]["steps"] == 3 and card["parameters"] > 0
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None


@pytest.mark.parametrize("domain", sorted(T.FAMILIES))
def test_near_misses_are_wrong_and_well_formed(domain):
    import random

    from fusechat3.scoring.math import verify_math
    from fusechat3.toyworld.mistakes import near_miss

    rng = random.Random(0)
    for t in T.split_tasks(domain, 200, "pretrain"):
        miss = near_miss(t, rng)
        assert miss != t.response and miss.strip()
        if domain == "math":
            assert verify_math(miss, t.gold)[0] is False
        elif domain == "code":  # still Python, defining the asked function
            env: dict = {}
            exec(miss.strip("`").removeprefix("python\n"), env)
            assert callable(env[t.meta["name"]])


def test_sources_are_generalists_with_noisy_answers_outside_their_specialty():
    from fusechat3.toyworld.build import SPECS, _training_tasks

    for spec in SPECS:
        if spec.role != "source":
            continue
        tasks = _training_tasks(spec, 0)
        for domain in ("math", "code", "instruction"):
            rows = [t for t in tasks if t.domain == domain]
            ideal = {
                t.prompt: t.response
                for t in T.split_tasks(domain, len(rows), "pretrain", families=spec.data[domain].families)
            }
            wrong = sum(t.response != ideal[t.prompt] for t in rows) / len(rows)
            assert abs(wrong - spec.data[domain].noise) < 0.03, (spec.name, domain, wrong)
            families = {t.family for t in rows}
            assert (
                families == set(T.FAMILIES[domain])
                if domain in spec.specialty
                else len(families) < len(T.FAMILIES[domain])
            )


def test_judge_pairs_are_held_out_and_the_shipped_judge_ranks_them():
    from fusechat3.toyworld.judge import pairwise_accuracy, reward_groups, reward_pairs
    from fusechat3.toyworld.mistakes import INSTRUCTION_KINDS

    groups = reward_groups(500, 0)
    assert all(len(misses) == len(INSTRUCTION_KINDS) and right not in misses for _, right, misses in groups)
    held = reward_pairs(T.EVAL_N)
    assert not {p for p, *_ in groups} & {p for p, *_ in held}
    assert {k for *_, k in held} == set(INSTRUCTION_KINDS) and all(good != bad for _, good, bad, _ in held)
    acc = pairwise_accuracy(resolve_model("toyworld:reward"), n=40)
    assert acc["pairs"] == 40 * len(INSTRUCTION_KINDS)
    # The shipped judge: far above chance on every kind, near-perfect where the form gives a miss away.
    assert acc["accuracy"] >= 0.8 and min(acc["per_kind"].values()) >= 0.5, acc
    assert min(acc["per_kind"][k] for k in ("family", "drop", "extra", "cut")) >= 0.95, acc


def test_judge_command_prints_the_accuracy(capsys):
    from fusechat3.cli import main

    assert main(["toyworld", "judge"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("toyworld:reward: pairwise accuracy ") and "800 held-out" in line and "swap" in line


def test_prefix_labels_mark_the_first_wrong_token_on():
    from fusechat3.toyworld.judge import _prefix_labels

    right = [9, 9, 1, 2, 3, 0]  # two prompt tokens, then the answer and its end token
    assert _prefix_labels(right, right, 2) == [-1, -1, 1, 1, 1, 1]
    assert _prefix_labels([9, 9, 1, 5, 3, 0], right, 2) == [-1, -1, 1, 0, 0, 0]  # a replaced word
    assert _prefix_labels([9, 9, 1, 2, 0], right, 2) == [-1, -1, 1, 1, 0]  # stops early
    assert _prefix_labels([9, 9, 1, 2, 3, 4, 0], right, 2) == [-1, -1, 1, 1, 1, 0, 0]  # one word too many


def test_local_labels_mark_only_the_wrong_places():
    from fusechat3.toyworld.judge import _local_labels

    right = [9, 9, 1, 2, 3, 0]
    assert _local_labels([9, 9, 3, 2, 1, 0], right, 2) == [-1, -1, 0, 1, 0, 1]  # a swap marks two tokens
    assert _local_labels([9, 9, 1, 1, 3, 0], right, 2) == [-1, -1, 1, 0, 1, 1]  # a repeat one
    assert _local_labels([9, 9, 1, 2, 3, 0, 0], right, 2) == [-1, -1, 1, 1, 1, 1, 0]  # past the end: wrong


def test_judge_variants_train_the_reward_models_own_backbone_as_an_lm_first():
    """The variants of benchmarks/toy_judge_variants.py: LM training first moves the reward model's
    own backbone (not a copy), then the reward training with the LM loss, local labels, two kinds."""
    import dataclasses

    import torch

    from fusechat3.toyworld.build import REWARD_SPEC, Learn, new_model
    from fusechat3.toyworld.judge import INSTRUCTION_KINDS, JudgeTraining, _pretrain_lm, accuracy_of, train_reward

    spec = dataclasses.replace(REWARD_SPEC, arch="llama", steps=2, data={"instruction": Learn(None, 30)})
    _, tok = train_reward(spec, 0, log=lambda *_: None)
    model = new_model(spec, tok, reward=True)
    before = [p.detach().clone() for p in model.model.parameters()]
    _pretrain_lm(model, tok, spec, 0, JudgeTraining(lm_steps=3), log=lambda *_: None)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model.parameters(), strict=True))
    how = JudgeTraining(lm_steps=2, lm_weight=1.0, labels="local", kinds=("swap", "repeat"))
    model, tok = train_reward(spec, 0, log=lambda *_: None, how=how)
    acc = accuracy_of(model.eval(), tok, n=5)
    assert acc["pairs"] == 40 and set(acc["per_kind"]) == set(INSTRUCTION_KINDS)
