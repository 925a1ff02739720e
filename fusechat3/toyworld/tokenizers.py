"""Tokenizers and chat templates of the toy world's models.

Each model gets a different tokenizer (character-level, byte-level BPE of different
sizes, with or without split digits) and a different chat template, like real source
models do, so that fusion code can never assume a shared vocabulary or format. Every
template's generation prompt ends in a special token, so a prompt and its completion
tokenize the same apart as together.
"""

from __future__ import annotations

from collections.abc import Iterable

# name -> (jinja template, special tokens, end-of-turn token)
TEMPLATES: dict[str, tuple[str, list[str], str]] = {
    "llama3": (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}<|im_end|>"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}",
        ["<|im_start|>", "<|im_sep|>", "<|im_end|>"],
        "<|im_end|>",
    ),
    "mistral": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}</s>"
        "{% else %}[INST]{{ m['content'] }}[/INST]{% endif %}{% endfor %}",
        ["[INST]", "[/INST]", "</s>"],
        "</s>",
    ),
    "plain": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|endoftext|>"
        "{% else %}<|user|>{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
        ["<|user|>", "<|assistant|>", "<|endoftext|>"],
        "<|endoftext|>",
    ),
}

PAD = "<pad>"
# Characters a character-level tokenizer must know even if the corpus lacks some.
_BASE_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def build_tokenizer(kind: str, vocab_size: int, template: str, corpus: Iterable[str]):
    """A PreTrainedTokenizerFast of `kind` ('char', 'bpe' or 'bpe-digits') trained on `corpus`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    chat_template, specials, eos = TEMPLATES[template]
    corpus = list(corpus)
    if kind == "char":
        chars = sorted(set(_BASE_CHARS) | {c for text in corpus for c in text})
        vocab = {t: i for i, t in enumerate([PAD, "<unk>", *specials, *chars])}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
    elif kind in ("bpe", "bpe-digits"):
        tok = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if kind == "bpe-digits":  # one token per digit: arithmetic is easier to learn
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD, *specials],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}: use char, bpe or bpe-digits")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=eos)
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials if s != eos]})
    fast.chat_template = chat_template
    fast.padding_side = "right"
    return fast
