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

    from fusechat3.toyworld.build import REWARD_SPEC, SPECS, build

    tiny = [
        dataclasses.replace(SPECS[1], steps=3, data={"code": (None, 40), "zh": (None, 20)}),
        dataclasses.replace(REWARD_SPEC, steps=3, data={"instruction": (None, 40)}),
    ]
    build(tmp_path, specs=tiny, jobs=2, log=lambda *_: None)
    lm = tmp_path / "qwen2-code"
    tok = AutoTokenizer.from_pretrained(lm)
    assert tok.chat_template and AutoModelForCausalLM.from_pretrained(lm).config.model_type == "qwen2"
    card = json.loads((lm / "toyworld.json").read_text())
    assert card["spec"]["steps"] == 3 and card["parameters"] > 0
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None
