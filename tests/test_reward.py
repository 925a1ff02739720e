"""Tests for fusechat3.scoring.reward: a real tiny LlamaForSequenceClassification, real forward passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fusechat3.scoring.reward import RewardModel  # noqa: E402

TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
WORDS = "the a cat dog sat ran on mat quickly slowly answer question please write say hello world why how".split()


def _conversation(n_words: int, seed: int) -> list[dict]:
    words = [WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n_words)]
    return [
        {"role": "user", "content": f"question {seed}: " + " ".join(words[: max(1, n_words // 3)])},
        {"role": "assistant", "content": " ".join(words)},
    ]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny reward model folder: BPE tokenizer with a chat template, Llama classifier WITHOUT pad_token_id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-rm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) + " user assistant : 0123456789" for i in range(len(WORDS))]
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=None,
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # a spread of rewards, so that mixing two up cannot go unnoticed
    model.save_pretrained(path)
    return path


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
