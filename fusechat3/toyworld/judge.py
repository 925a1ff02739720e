"""The toy world's judge: a reward model (a real ...ForSequenceClassification) that scores
instruction responses, trained and measured the way real reward models are.

Training is pairwise (Bradley-Terry: loss = -log sigmoid(r(right) - r(near miss))) on
(prompt, right answer, near miss) triples of the pretraining pool; `mistakes.near_miss` makes
the near misses, the wrong answers a weak model writes. What matters for fusion is that the
judge ranks a right response above a wrong one *for the same prompt*, so that is what it is
trained on and what `pairwise_accuracy` measures, on held-out prompts (the evaluation pool,
which no model of the toy world is trained on):

    fusechat3 toyworld judge            # accuracy of the shipped reward model
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from fusechat3.toyworld import tasks as T
from fusechat3.toyworld.mistakes import INSTRUCTION_KINDS, near_miss


def reward_pairs(n: int, seed: int, split: str = "pretrain") -> list[tuple[str, str, str, str]]:
    """(prompt, right answer, near miss, kind of near miss): one near miss of a random kind per task
    of `split`, or with split 'eval' one of every kind per held-out task (n = tasks)."""
    rng = random.Random(f"reward:{split}:{seed}")
    out = []
    for t in T.split_tasks("instruction", n, split, seed=seed + 11 if split == "pretrain" else 0):
        kinds = INSTRUCTION_KINDS if split == "eval" else (rng.choice(INSTRUCTION_KINDS),)
        for kind in kinds:
            out.append((t.prompt, t.response, near_miss(t, rng, kind), kind))
    return out


def _encode(tok, prompt: str, response: str) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    return tok(text, add_special_tokens=False)["input_ids"]


def train_reward(spec, seed: int, log=print):
    """Train the reward model of `spec` (build.REWARD_SPEC) on `spec.data['instruction'].n` pairs."""
    import torch
    import torch.nn.functional as F

    from fusechat3.toyworld.build import as_served, batch, fit, fit_lm, new_model
    from fusechat3.toyworld.tokenizers import build_tokenizer

    torch.manual_seed(seed)
    pairs = reward_pairs(spec.data["instruction"].n, seed)
    corpus = [p + "\n" + r for p, good, bad, _ in pairs for r in (good, bad)]
    tok = as_served(build_tokenizer(spec.tokenizer, spec.vocab_size, spec.template, corpus), spec)
    model = new_model(spec, tok, reward=True)
    if spec.pretrain_steps:
        # First an instruct model: a causal LM that writes the right answers. Its backbone is the
        # reward model's; only the score head starts from scratch.
        lm = new_model(spec, tok)
        tasks = T.split_tasks("instruction", spec.data["instruction"].n, "pretrain", seed=seed + 13)
        fit_lm(lm, tok, tasks, dataclasses.replace(spec, steps=spec.pretrain_steps, batch_size=32), seed, log)
        missing, unexpected = model.load_state_dict(lm.state_dict(), strict=False)
        assert set(missing) == {k for k in model.state_dict() if k.startswith("score.")}, missing
    encoded = [(_encode(tok, p, good), _encode(tok, p, bad)) for p, good, bad, _ in pairs]

    def loss_of(idx: list[int]):
        ids, mask = batch([encoded[i][0] for i in idx] + [encoded[i][1] for i in idx], tok.pad_token_id)
        score = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        return -F.logsigmoid(score[: len(idx)] - score[len(idx) :]).mean()

    fit(model, len(encoded), spec, seed, loss_of, log)
    return model, tok


def pairwise_accuracy(model_path: str, n: int = T.EVAL_N, batch_size: int = 64) -> dict:
    """How often the reward model at `model_path` scores the right answer above a near miss of it,
    over the held-out prompts (`n` evaluation tasks x every kind of near miss): overall and per kind."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fusechat3.toyworld.build import batch

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    pairs = reward_pairs(n, 0, split="eval")
    texts = [(p, r) for p, good, bad, _ in pairs for r in (good, bad)]
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = [_encode(tok, p, r) for p, r in texts[i : i + batch_size]]
            ids, mask = batch(chunk, tok.pad_token_id)
            scores += model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    right, total = Counter(), Counter()
    for j, (_, _, _, kind) in enumerate(pairs):
        total[kind] += 1
        right[kind] += scores[2 * j] > scores[2 * j + 1]
    return {
        "pairs": len(pairs),
        "prompts": n,
        "accuracy": sum(right.values()) / len(pairs),
        "per_kind": {k: right[k] / total[k] for k in INSTRUCTION_KINDS if total[k]},
    }
