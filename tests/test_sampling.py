"""Tests of the sampling backends on a tiny real Llama: vLLM on CPU and transformers.

The vLLM import and engine start are the slow part (~20 s), so every vLLM test shares
one module-scoped engine; the test that creates engines in sequence runs last and
closes it first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from fusechat3.sampling import GenParams, get_sampler

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "hello world",
    "add 12 and 30",
    "the quick brown fox",
    "def f(x)",
    "how are you",
    "over the lazy dog",
    "x",
    "fox jumps",
]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MAX_LEN = 128  # max_position_embeddings of the tiny model = vLLM's max_model_len
SAMPLED = GenParams(n=3, temperature=0.8, top_p=0.95, max_tokens=16)
GREEDY = GenParams(n=2, temperature=0, max_tokens=24)


def _boost_eos(model, tokenizer) -> None:
    # Make EOS likelier so that some replies end on it and others run to max_tokens.
    model.lm_head.weight[tokenizer.eos_token_id] *= 1.5


@pytest.fixture(scope="module")
def tiny_model(make_tiny_llama) -> str:
    """A byte-level BPE tokenizer with a chat template and a random 2-layer Llama (head size 32)."""
    return make_tiny_llama(
        "tiny_llama",
        corpus=[p + " over the lazy dog, 12 + 30 = 42" for p in PROMPTS] * 10,
        vocab_size=300,
        special_tokens=["<s>", "</s>", "<pad>"],
        tokens={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        chat_template=TEMPLATE,
        config={
            "max_position_embeddings": MAX_LEN,
            "initializer_range": 0.2,  # std 0.2: peaked, not near-uniform, next-token distributions
            "tie_word_embeddings": False,
        },
        tweak=_boost_eos,
    )


@pytest.fixture(scope="module")
def vllm_run(tiny_model: str):
    """One vLLM engine for the module, and the first sampled call it answered (for the seeding test)."""
    sampler = get_sampler("vllm", tiny_model, seed=0)
    first = sampler.generate(CONVERSATIONS[:4], SAMPLED)
    yield sampler, first
    sampler.close()


@pytest.fixture(scope="module")
def hf_sampler(tiny_model: str):
    sampler = get_sampler("hf", tiny_model, batch_size=3)
    yield sampler
    sampler.close()


def long_conversation() -> list[dict]:
    return [{"role": "user", "content": "the quick brown fox " * 40}]


def check_shape(results, n: int, max_tokens: int, count: int) -> None:
    assert len(results) == count
    for completions in results:
        assert len(completions) == n
        for c in completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.num_tokens <= max_tokens
            if c.finish_reason == "length":
                assert c.num_tokens == max_tokens


# --- no model needed ---------------------------------------------------------------


def test_unknown_backend_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope' is not registered; choose one of \['hf', 'openai', 'vllm'\]"):
        get_sampler("nope", "some/model")


def test_genparams_validation_errors() -> None:
    from fusechat3.config import validate

    assert validate(GenParams, {"n": 5, "temperature": 0.7, "stop": ["\n\n"]}).n == 5
    with pytest.raises(ValueError, match=r"unknown key 'sources\.qwen\.sampling\.top_q' \(did you mean 'top_p'\?\)"):
        validate(GenParams, {"top_q": 0.9}, where="sources.qwen.sampling")
    with pytest.raises(ValueError, match=r"^key 'n' must be >= 1, got 0$"):
        validate(GenParams, {"n": 0})
    with pytest.raises(ValueError, match=r"^key 'top_p' must be in \(0, 1\], got 1.5$"):
        validate(GenParams, {"top_p": 1.5})
    with pytest.raises(ValueError, match="must be a list of strings"):
        validate(GenParams, {"stop": "\n"})  # a bare string would be split into characters


def test_import_is_light() -> None:
    code = "import sys, fusechat3.sampling; print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- transformers backend ---------------------------------------------------------


def test_hf_sampling_is_seeded(hf_sampler) -> None:
    first = hf_sampler.generate(CONVERSATIONS[:2], SAMPLED)
    check_shape(first, 3, 16, 2)
    assert any(len({c.text for c in cs}) > 1 for cs in first), "n samples of a prompt should differ"
    assert hf_sampler.generate(CONVERSATIONS[:2], SAMPLED) == first  # same seed, same samples
    other = hf_sampler.generate(CONVERSATIONS[:2], GenParams(n=3, temperature=0.8, max_tokens=16, seed=1))
    assert other != first


def test_hf_too_long_prompt_and_bad_option(hf_sampler, tiny_model: str) -> None:
    results = hf_sampler.generate([long_conversation(), *CONVERSATIONS[:2]], GREEDY)
    assert [c.finish_reason for c in results[0]] == ["error", "error"]
    assert all(c.finish_reason != "error" for cs in results[1:] for c in cs)
    assert hf_sampler.stats["prompt_too_long"] == 1
    with pytest.raises(ValueError, match=r"unknown hf option\(s\) \['tensor_parallel_size'\]"):
        get_sampler("hf", tiny_model, tensor_parallel_size=2)


def test_hf_chat_template_from_the_recipe(hf_sampler, tiny_model: str) -> None:
    from fusechat3.sampling.base import chat_prompt_ids

    other = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    ids = chat_prompt_ids(hf_sampler.tokenizer, CONVERSATIONS[:1], other)[0]
    assert hf_sampler.tokenizer.decode(ids) == "<s>[user] hello world\n[assistant] "
    templated = get_sampler("hf", tiny_model, chat_template=other)
    try:
        with_other = templated.generate(CONVERSATIONS, GREEDY)
    finally:
        templated.close()
    assert with_other != hf_sampler.generate(CONVERSATIONS, GREEDY)


def test_conversation_must_end_with_user(hf_sampler) -> None:
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError, match="conversation 1: the last message must be the user's, got 'assistant'"):
        hf_sampler.generate([CONVERSATIONS[0], bad], GREEDY)


# --- vLLM backend -----------------------------------------------------------------


def test_vllm_n_completions_per_prompt(vllm_run) -> None:
    sampler, first = vllm_run
    check_shape(first, 3, 16, 4)
    assert any(len({c.text for c in cs}) > 1 for cs in first), "n samples of a prompt should differ"
    assert sampler.stats["requests"] >= 4


def test_vllm_greedy_is_repeatable(vllm_run) -> None:
    sampler, _ = vllm_run
    a = sampler.generate(CONVERSATIONS, GREEDY)
    check_shape(a, 2, 24, len(PROMPTS))
    assert all(cs[0] == cs[1] for cs in a)
    assert sampler.generate(CONVERSATIONS, GREEDY) == a


def test_vllm_too_long_prompt_does_not_fail_the_batch(vllm_run, caplog) -> None:
    sampler, _ = vllm_run
    before = sampler.stats["prompt_too_long"]
    # ~100 prompt tokens fit in 128 alone, but not with max_tokens=40: an error as well.
    fits_alone = [{"role": "user", "content": "x" * 100}]
    params = GenParams(n=2, temperature=0, max_tokens=40)
    with caplog.at_level(logging.WARNING):
        results = sampler.generate([CONVERSATIONS[0], long_conversation(), fits_alone, CONVERSATIONS[1]], params)
    assert [(c.finish_reason, c.error) for c in results[1]] == [("error", "prompt_too_long")] * 2
    assert [c.text for c in results[1]] == ["", ""]
    assert [(c.finish_reason, c.error) for c in results[2]] == [("error", "prompt_too_long")] * 2
    assert sampler.stats["prompt_too_long"] - before == 2
    assert "vllm: 2 prompt(s) longer than max_model_len 128 minus max_tokens 40" in caplog.text
    assert [results[0], results[3]] == sampler.generate(CONVERSATIONS[:2], params)


def test_hf_greedy_equals_vllm_greedy(vllm_run, hf_sampler) -> None:
    sampler, _ = vllm_run
    from_vllm = sampler.generate(CONVERSATIONS, GREEDY)
    from_hf = hf_sampler.generate(CONVERSATIONS, GREEDY)
    # Both ends are exercised: some replies stop on EOS, others run to max_tokens.
    assert {cs[0].finish_reason for cs in from_hf} == {"stop", "length"}
    assert from_hf == from_vllm


def test_stop_strings_agree(vllm_run, hf_sampler) -> None:
    sampler, _ = vllm_run
    full = sampler.generate(CONVERSATIONS[:1], GenParams(temperature=0, max_tokens=24))[0][0]
    assert len(full.text) >= 6
    stop = full.text[3:5]
    params = GenParams(temperature=0, max_tokens=24, stop=[stop])
    from_vllm = sampler.generate(CONVERSATIONS[:1], params)[0][0]
    from_hf = hf_sampler.generate(CONVERSATIONS[:1], params)[0][0]
    assert from_vllm.finish_reason == "stop"
    assert from_vllm.text == full.text[: full.text.find(stop)]
    assert from_vllm.num_tokens < full.num_tokens
    assert from_hf == from_vllm


def test_vllm_seeds_are_per_prompt(vllm_run) -> None:
    """A prompt's samples depend on its own seed only, not on its batch or position."""
    sampler, _ = vllm_run
    seeds = [11, 12, 13, 14]
    batch = sampler.generate(CONVERSATIONS[:4], SAMPLED, seeds=seeds)
    check_shape(batch, 3, 16, 4)
    alone = sampler.generate([CONVERSATIONS[2]], SAMPLED, seeds=[13])
    assert alone[0] == batch[2]
    reordered = sampler.generate([CONVERSATIONS[3], CONVERSATIONS[0]], SAMPLED, seeds=[14, 11])
    assert reordered == [batch[3], batch[0]]
    assert sampler.generate([CONVERSATIONS[2]], SAMPLED, seeds=[99])[0] != batch[2]


def test_vllm_engines_in_sequence_and_seeding(vllm_run, tiny_model: str) -> None:
    """Runs last: closes the module engine; a fresh engine gives the same samples for the
    same seeds (nothing depends on what the engine did before), another seed others."""
    sampler, first = vllm_run
    sampler.close()
    with pytest.raises(ValueError, match=r"unknown vLLM option\(s\) \['not_an_option'\]"):
        get_sampler("vllm", tiny_model, not_an_option=1)
    second = get_sampler("vllm", tiny_model, seed=5)
    try:
        assert second.generate(CONVERSATIONS[:4], SAMPLED) == first
        reseeded = second.generate(CONVERSATIONS[:4], GenParams(n=3, temperature=0.8, max_tokens=16, seed=7))
        check_shape(reseeded, 3, 16, 4)
        assert reseeded != first
    finally:
        second.close()


def test_presence_and_frequency_penalties(hf_sampler) -> None:
    """vLLM gets them; transformers has neither, so the hf backend says so in one line; left at 0 they are not in
    the settings' dump, so adding them changed no existing run's stage keys."""
    from fusechat3.errors import RecipeError
    from fusechat3.sampling.vllm import _sampling_params

    assert "presence_penalty" not in GenParams().model_dump() and "frequency_penalty" not in GenParams().model_dump()
    params = GenParams(n=1, presence_penalty=0.1, frequency_penalty=-0.5)
    assert params.model_dump()["presence_penalty"] == 0.1 and params.model_dump()["frequency_penalty"] == -0.5
    vllm_params = _sampling_params(params, seed=3)
    assert (vllm_params.presence_penalty, vllm_params.frequency_penalty) == (0.1, -0.5)
    with pytest.raises(RecipeError, match=r"transformers has no presence_penalty or frequency_penalty"):
        hf_sampler.generate(CONVERSATIONS[:1], params)
    with pytest.raises(ValueError, match=r"presence_penalty\n.*must be in \[-2, 2\], got 3"):
        GenParams(presence_penalty=3.0)
