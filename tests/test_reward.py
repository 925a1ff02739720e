"""Tests for fusechat3.scoring.reward: a real tiny LlamaForSequenceClassification, real forward passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fusechat3.scoring.reward import RewardModel, token_budget_batches  # noqa: E402

TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
WORDS = "the a cat dog sat ran on mat quickly slowly answer question please write say hello world why how".split()


def _conversation(n_words: int, seed: int) -> list[dict]:
    words = [WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n_words)]
    return [
        {"role": "user", "content": f"question {seed}: " + " ".join(words[: max(1, n_words // 3)])},
        {"role": "assistant", "content": " ".join(words)},
    ]


def _spread_scores(model, tokenizer) -> None:
    model.score.weight.normal_(0.0, 1.0)  # a spread of rewards, so that mixing two up cannot go unnoticed


@pytest.fixture(scope="module")
def rm_dir(make_tiny_llama) -> Path:
    """A tiny reward model folder: BPE tokenizer with a chat template, Llama classifier WITHOUT pad_token_id."""
    return Path(
        make_tiny_llama(
            "tiny-rm",
            corpus=[" ".join(WORDS[i:] + WORDS[:i]) + " user assistant : 0123456789" for i in range(len(WORDS))],
            vocab_size=200,
            special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
            tokens={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
            chat_template=TEMPLATE,
            byte_level=False,
            head="classifier",
            config={"head_dim": 32, "max_position_embeddings": 256, "num_labels": 1, "pad_token_id": None},
            tweak=_spread_scores,
        )
    )


@pytest.fixture(scope="module")
def rm(rm_dir: Path) -> Iterator[RewardModel]:
    model = RewardModel(str(rm_dir), batch_size=3, max_length=64, device="cpu")
    yield model
    model.close()


def _manual_score(rm: RewardModel, conversation: list[dict]) -> float:
    """The reward computed by hand: template, tokens, the base model, the score head at the last token."""
    text = rm.tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = torch.tensor([rm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = rm.model.model(input_ids=ids).last_hidden_state
        return float(rm.model.score(hidden[0, -1]))


def test_pad_token_is_set_in_the_model_config(rm: RewardModel) -> None:
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id == rm.pad_id


def test_matches_a_manual_forward_pass(rm: RewardModel) -> None:
    conversations = [_conversation(n, seed) for seed, n in enumerate([3, 12, 7])]
    got = rm.score(conversations)
    expected = [_manual_score(rm, c) for c in conversations]
    assert [reason for _, reason in got] == ["ok"] * 3
    assert [r for r, _ in got] == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 1e-2  # the rewards differ, so a mix-up would show


def test_batches_equal_one_at_a_time_and_order_is_kept(rm: RewardModel) -> None:
    lengths = [2, 15, 5, 9, 1, 13, 4, 11]  # mixed, so sorting by length reorders them
    conversations = [_conversation(n, seed) for seed, n in enumerate(lengths)]
    batched = rm.score(conversations)
    one_by_one = [rm.score([c])[0] for c in conversations]
    assert [reason for _, reason in batched] == ["ok"] * len(lengths)
    assert [r for r, _ in batched] == pytest.approx([r for r, _ in one_by_one], abs=1e-5)
    # A different batch size gives different batch compositions and paddings, and the same rewards.
    rm.batch_size = 5
    try:
        reordered = rm.score(conversations[::-1])[::-1]
    finally:
        rm.batch_size = 3
    assert [r for r, _ in reordered] == pytest.approx([r for r, _ in batched], abs=1e-5)


def test_too_long_and_malformed_are_counted_not_truncated(rm: RewardModel) -> None:
    short, long_ = _conversation(4, 1), _conversation(80, 2)
    text = rm.tokenizer.apply_chat_template(long_, tokenize=False)
    assert len(rm.tokenizer(text, add_special_tokens=False)["input_ids"]) > rm.max_length
    got = rm.score([short, long_, "not a conversation", [], short])
    assert got[1] == (None, "too_long")
    assert got[2] == (None, "bad_conversation") and got[3] == (None, "bad_conversation")
    assert got[0][1] == got[4][1] == "ok" and got[0][0] == pytest.approx(got[4][0], abs=1e-6)
    assert rm.score([]) == []


def test_non_finite_reward(rm_dir: Path) -> None:
    model = RewardModel(str(rm_dir), batch_size=2, max_length=64, device="cpu")
    with torch.no_grad():
        model.model.score.weight.fill_(float("nan"))
    assert model.score([_conversation(3, 0), _conversation(5, 1)]) == [(None, "non_finite")] * 2
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.score([_conversation(3, 0)])


def test_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no-such-model.*cannot load") as info:
        RewardModel(str(missing), device="cpu")
    assert "\n" not in str(info.value)


# --- batching under a token budget ---------------------------------------------------------------------------


def test_token_budget_batches_respect_rows_and_tokens() -> None:
    lengths = [5, 40, 12, 7, 300, 33, 1, 18, 25, 9, 60, 2]
    batches = token_budget_batches(lengths, batch_size=4, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every index once
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first
    assert batches[0] == [4]  # longer than the budget: alone
    for b in batches[1:]:
        assert len(b) <= 4 and len(b) * max(lengths[i] for i in b) <= 100
    assert [len(b) for b in batches] == [1, 1, 2, 4, 4]  # 300 | 60 | 40 33 | 25 18 12 9 | 7 5 2 1
    assert token_budget_batches(lengths, batch_size=5, max_tokens=None)[0] == [4, 10, 1, 5, 8]
    assert token_budget_batches([], batch_size=3, max_tokens=10) == []


def test_forward_passes_stay_within_the_token_budget(rm_dir: Path) -> None:
    model = RewardModel(str(rm_dir), batch_size=8, max_length=64, max_tokens_per_batch=60, device="cpu")
    shapes: list[tuple[int, int]] = []
    forward = model._forward

    def spy(sequences: list[list[int]]) -> list[float]:
        shapes.append((len(sequences), max(len(s) for s in sequences)))
        return forward(sequences)

    model._forward = spy  # type: ignore[method-assign]
    lengths = [2, 15, 5, 9, 1, 13, 4, 11, 3, 6]
    conversations = [_conversation(n, seed) for seed, n in enumerate(lengths)]
    budgeted = model.score(conversations)
    assert sum(rows for rows, _ in shapes) == len(lengths)
    assert all(rows * width <= 60 or rows == 1 for rows, width in shapes)
    assert len(shapes) > 2  # the budget, not batch_size, cut these
    model.max_tokens_per_batch, model.batch_size = None, 16
    assert [r for r, _ in budgeted] == pytest.approx([r for r, _ in model.score(conversations)], abs=1e-5)
    model.close()


# --- batch independence on the toy world's reward model -----------------------------------------------------


def _toy_conversations(n: int) -> list[list[dict]]:
    """Toy-world prompts with responses of varied length (their reference answers, padded with prompt words)."""
    from data_builders.toyworld import build

    prompts = build("fusion", {"instruction": n // 2, "math": n - n // 2})
    out = []
    for k, p in enumerate(prompts):
        words = p["messages"][0]["content"].split()
        answer = json.loads(p["meta"] or "{}").get("reference") or p["gold"] or ""
        extra = " ".join((words * 3)[: (k * 7) % (3 * len(words))])  # 0 .. 3 x prompt words: lengths differ
        out.append(p["messages"] + [{"role": "assistant", "content": f"{answer} {extra}".strip()}])
    return out


@pytest.fixture(scope="module")
def toy_rm() -> Iterator[RewardModel]:
    from fusechat3.recipe import resolve_model

    model = RewardModel(resolve_model("toyworld:reward"), batch_size=16, max_length=512, device="cpu")
    assert model.model.dtype == torch.float32
    yield model
    model.close()


def test_score_does_not_depend_on_batch_composition(toy_rm: RewardModel) -> None:
    convs = _toy_conversations(24)
    tok = toy_rm.tokenizer
    lengths = [
        len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]) for c in convs
    ]
    alone = [toy_rm.score([c])[0][0] for c in convs]
    assert max(alone) - min(alone) > 0.1  # the rewards differ: a mix-up would show
    assert max(lengths) > 2 * min(lengths)  # the padding differs a lot between rows

    target = sorted(range(len(convs)), key=lambda i: lengths[i])[len(convs) // 3]  # a shortish one
    longer = [c for i, c in enumerate(convs) if lengths[i] > lengths[target]][:15]
    shorter = [c for i, c in enumerate(convs) if lengths[i] < lengths[target]]
    contexts = {
        "with 15 longer ones": longer + [convs[target]],
        "with shorter ones": [convs[target]] + shorter,
        "in the middle of all": convs[: target + 1] + convs,
    }
    for name, batch in contexts.items():
        got = dict(zip(map(id, batch), toy_rm.score(batch), strict=True))[id(convs[target])]
        assert got[1] == "ok"
        assert got[0] == pytest.approx(alone[target], abs=1e-5), name

    # Every row of differently composed batches (row and token limits) equals its score alone.
    for batch_size, budget in ((16, None), (5, 400), (7, 120)):
        toy_rm.batch_size, toy_rm.max_tokens_per_batch = batch_size, budget
        try:
            got = toy_rm.score(convs[::-1])[::-1]
        finally:
            toy_rm.batch_size, toy_rm.max_tokens_per_batch = 16, 16384
        assert [r for r, _ in got] == pytest.approx(alone, abs=1e-5), (batch_size, budget)


# --- a custom reward model whose output has a `score` field (ArmoRM-style) ----------------------------------


def _armo_like_classes() -> tuple[type, type]:
    """A tiny multi-objective reward model like ArmoRM: `logits` holds 3 objective rewards, `score` their gated
    mix. Registered with the Auto classes, as `trust_remote_code` would do for a Hub checkpoint."""
    from dataclasses import dataclass

    from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaConfig, LlamaModel, PreTrainedModel
    from transformers.utils import ModelOutput

    class ArmoLikeConfig(LlamaConfig):
        model_type = "fusechat3-test-armo-like"

    @dataclass
    class ArmoLikeOutput(ModelOutput):
        score: torch.FloatTensor | None = None
        logits: torch.FloatTensor | None = None

    class ArmoLikeRewardModel(PreTrainedModel):
        config_class = ArmoLikeConfig

        def __init__(self, config: ArmoLikeConfig) -> None:
            super().__init__(config)
            self.model = LlamaModel(config)
            self.regression = torch.nn.Linear(config.hidden_size, 3, bias=False)
            self.gate = torch.nn.Linear(config.hidden_size, 3, bias=False)
            self.post_init()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            last = hidden[torch.arange(len(input_ids)), attention_mask.sum(-1) - 1]
            rewards = self.regression(last)
            score = (torch.softmax(self.gate(last), -1) * rewards).sum(-1, keepdim=True)
            return ArmoLikeOutput(score=score, logits=rewards)

    AutoConfig.register(ArmoLikeConfig.model_type, ArmoLikeConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(ArmoLikeConfig, ArmoLikeRewardModel, exist_ok=True)
    return ArmoLikeConfig, ArmoLikeRewardModel


def test_custom_model_score_field_is_the_reward(rm_dir: Path, tmp_path: Path) -> None:
    import shutil

    config_cls, model_cls = _armo_like_classes()
    for f in rm_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, tmp_path / f.name)
    torch.manual_seed(1)
    config = config_cls(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    net = model_cls(config)
    with torch.no_grad():
        net.regression.weight.normal_(0.0, 1.0)
        net.gate.weight.normal_(0.0, 1.0)
    net.save_pretrained(tmp_path)

    rm = RewardModel(str(tmp_path), batch_size=4, max_length=64, device="cpu")
    assert type(rm.model).__name__ == "ArmoLikeRewardModel"
    conversations = [_conversation(n, seed) for seed, n in enumerate([3, 14, 6, 10, 1])]
    got = rm.score(conversations)
    expected, first_objective = [], []
    for c in conversations:  # one at a time, no padding: the model's own `score` and `logits`
        ids = rm.tokenizer(rm.tokenizer.apply_chat_template(c, tokenize=False), add_special_tokens=False)
        with torch.no_grad():
            out = rm.model(input_ids=torch.tensor([ids["input_ids"]]))
        expected.append(float(out.score[0, 0]))
        first_objective.append(float(out.logits[0, 0]))
    assert [reason for _, reason in got] == ["ok"] * len(conversations)
    assert [r for r, _ in got] == pytest.approx(expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(expected, first_objective, strict=True)) > 1e-2  # not logits[:, 0]
    rm.close()


# --- the vLLM pooling backend ---------------------------------------------------------------------------------


@pytest.mark.slow  # about a minute on 2 CPU cores: vLLM's import and engine start
def test_vllm_backend_matches_transformers(toy_rm: RewardModel) -> None:
    pytest.importorskip("vllm")
    from fusechat3.recipe import resolve_model

    convs = _toy_conversations(16)
    long_ = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]
    with RewardModel(resolve_model("toyworld:reward"), max_length=256, backend="vllm") as vrm:
        got = vrm.score(convs + [long_, "not a conversation"])
    expected = toy_rm.score(convs)
    assert got[-2:] == [(None, "too_long"), (None, "bad_conversation")]
    assert [why for _, why in got[:-2]] == ["ok"] * len(convs)
    assert [r for r, _ in got[:-2]] == pytest.approx([r for r, _ in expected], abs=1e-4)
    assert max(r for r, _ in expected) - min(r for r, _ in expected) > 0.1  # distinct rewards: a mix-up shows
