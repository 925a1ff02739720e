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

import random
from collections import Counter
from dataclasses import dataclass, replace

from fusechat3.toyworld import tasks as T
from fusechat3.toyworld.build import as_served, batch, encode_pair, fit, fit_lm, new_model
from fusechat3.toyworld.mistakes import INSTRUCTION_KINDS, near_miss


def _judge_tasks(n: int, seed: int) -> list[T.Task]:
    """The judge's own stream of the pretraining pool, kept out of the evaluation prompts (of seed 0,
    the ones `reward_pairs` and the recipes' eval use), so that the held-out pairs are held out."""
    return T.generate("instruction", n, T.SPLIT_SEEDS["pretrain"] + 11 + seed, exclude=T.eval_prompts(), unique=False)


def reward_groups(n: int, seed: int) -> list[tuple[str, str, list[str]]]:
    """(prompt, right answer, one near miss of every kind) for `n` tasks of the pretraining pool."""
    rng = random.Random(f"reward:pretrain:{seed}")
    return [
        (t.prompt, t.response, [near_miss(t, rng, kind) for kind in INSTRUCTION_KINDS]) for t in _judge_tasks(n, seed)
    ]


def reward_pairs(n: int = T.EVAL_N) -> list[tuple[str, str, str, str]]:
    """The held-out pairs: (prompt, right answer, near miss, kind) for one near miss of every kind
    per evaluation task (a pool no model of the toy world is trained on)."""
    rng = random.Random("reward:eval")
    return [
        (t.prompt, t.response, near_miss(t, rng, kind), kind)
        for t in T.split_tasks("instruction", n, "eval")
        for kind in INSTRUCTION_KINDS
    ]


def _encode(tok, prompt: str, response: str) -> list[int]:
    prompt_ids, response_ids = encode_pair(tok, prompt, response)
    return prompt_ids + response_ids


def _prefix_labels(seq: list[int], right: list[int], start: int) -> list[float]:
    """Per token: 1 while the response so far is a prefix of the right one, 0 from the first wrong
    token on (and at the end of a response that stops early); -1 (no loss) over the prompt."""
    out, ok = [], True
    for t, token in enumerate(seq):
        ok = ok and t < len(right) and token == right[t]
        out.append(1.0 if ok else 0.0)
    if len(seq) < len(right):
        out[-1] = 0.0
    return [-1.0] * start + out[start:]


def _local_labels(seq: list[int], right: list[int], start: int) -> list[float]:
    """Per token: 1 where the token equals the right answer's token at the same place, else 0
    (a swap marks two tokens, a repeat one); -1 over the prompt. A variant of `_prefix_labels`."""
    return [-1.0] * start + [float(t < len(right) and seq[t] == right[t]) for t in range(start, len(seq))]


LABELS = {"prefix": _prefix_labels, "local": _local_labels}


@dataclass(frozen=True)
class JudgeTraining:
    """How the judge is trained beyond its `ModelSpec`; the defaults are the shipped judge's.

    The options are the variants `benchmarks/toy_judge_variants.py` measures: `lm_steps` steps of
    causal-LM training on right answers first (a reward model starts from a language model that
    can do the task, as real ones start from an instruction-tuned LM), `lm_weight` x that LM loss
    kept during the reward training (generative regularisation of the hidden states, GRM-style),
    the per-token `labels` rule, and `kinds`, the near-miss kinds compared (None: all).
    """

    lm_steps: int = 0
    lm_lr: float = 3e-3
    lm_weight: float = 0.0
    labels: str = "prefix"
    kinds: tuple[str, ...] | None = None
    dense_weight: float = 1.0  # weight of the dense per-token loss beside the pairwise one


def train_reward(spec, seed: int, log=print, how: JudgeTraining = JudgeTraining()):
    """Train the reward model of `spec` (build.REWARD_SPEC) on `spec.data['instruction'].n` groups.

    Each group is a prompt's right answer and one near miss of every kind, all compared in one
    batch (as InstructGPT trains on every comparison of a prompt at once). Two losses on the score
    head: Bradley-Terry on the last token (right above each near miss: what the pipeline reads),
    and a dense one, the head at every response token predicting "the response so far is still
    right" (the per-token signal a generator gets from next-token training). The 4-layer model
    learns the form of an answer (length, case, kind) well and the order of its words only in
    part: `fusechat3 toyworld judge` says how well, per kind of near miss.
    """
    import torch
    import torch.nn.functional as F

    from fusechat3.toyworld.tokenizers import build_tokenizer

    torch.manual_seed(seed)
    groups = reward_groups(spec.data["instruction"].n, seed)
    corpus = [p + "\n" + r for p, right, misses in groups[:5000] for r in (right, *misses)]
    tok = as_served(build_tokenizer(spec.tokenizer, spec.vocab_size, spec.template, corpus), spec)
    model = new_model(spec, tok, reward=True)
    keep = [0] + [1 + INSTRUCTION_KINDS.index(k) for k in how.kinds or INSTRUCTION_KINDS]
    label_of = LABELS[how.labels]
    encoded, labels, starts = [], [], []
    for p, right, misses in groups:
        start = len(encode_pair(tok, p, right)[0])
        seqs = [_encode(tok, p, r) for r in (right, *misses)]
        seqs = [seqs[i] for i in keep]
        encoded.append(seqs)
        starts.append(start)
        labels.append([label_of(s, seqs[0], start) for s in seqs])
    k = len(keep) - 1
    bert = spec.arch == "bert"
    dense_weight = how.dense_weight
    if bert and (how.lm_steps or how.lm_weight):
        raise ValueError("judge: lm_steps / lm_weight need a causal model, not bert")
    if how.lm_steps:
        _pretrain_lm(model, tok, spec, seed, how, log)
    embeddings = model.get_input_embeddings().weight

    def loss_of(idx: list[int]):
        seqs = [s for i in idx for s in encoded[i]]
        ids, mask = batch(seqs, tok.pad_token_id)
        y = torch.full(ids.shape, -1.0)
        for r, lab in enumerate(lab for i in idx for lab in labels[i]):
            y[r, : len(lab)] = torch.tensor(lab)
        if bert:  # bidirectional: the score is the head on the pooled first token, as `model(...)` reads it
            out = model.bert(input_ids=ids, attention_mask=mask)
            last = model.classifier(model.dropout(out.pooler_output))[:, 0].view(len(idx), k + 1)
            if dense_weight:  # the same head (pooler dense + tanh + classifier) at every token
                pooled = model.bert.pooler.activation(model.bert.pooler.dense(out.last_hidden_state))
                per_token = model.classifier(model.dropout(pooled))[..., 0]
                dense = F.binary_cross_entropy_with_logits(per_token[y >= 0], y[y >= 0])
            else:
                dense = torch.zeros(())
        else:
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            per_token = model.score(hidden)[..., 0]
            dense = F.binary_cross_entropy_with_logits(per_token[y >= 0], y[y >= 0])
            last = per_token[torch.arange(len(seqs)), mask.sum(1) - 1].view(len(idx), k + 1)
        dense = dense_weight * dense
        loss = dense - F.logsigmoid(last[:, :1] - last[:, 1:]).mean()
        if how.lm_weight:  # next-token loss on the right answers, through the tied input embeddings
            rows = torch.arange(0, len(seqs), k + 1)
            targets = ids[rows, 1:].clone()
            for r, i in enumerate(idx):
                targets[r, : starts[i] - 1] = -100
                targets[r, len(encoded[i][0]) - 1 :] = -100
            logits = hidden[rows, :-1] @ embeddings.T
            loss = loss + how.lm_weight * F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return loss

    fit(model, len(encoded), spec, seed, loss_of, log)
    return model, tok


def _pretrain_lm(model, tok, spec, seed: int, how: JudgeTraining, log) -> None:
    """Causal-LM training of the reward model's backbone on right answers of the pretraining pool
    (its own stream), the LM head tied to the input embeddings."""
    lm = new_model(spec, tok)
    lm.model = model.model
    lm.lm_head.weight = model.get_input_embeddings().weight
    fit_lm(
        lm, tok, _judge_tasks(30000, seed), replace(spec, steps=how.lm_steps, batch_size=32, lr=how.lm_lr), seed, log
    )
    model.train()


def pairwise_accuracy(model_path: str, n: int = T.EVAL_N, batch_size: int = 64) -> dict:
    """How often the reward model at `model_path` scores the right answer above a near miss of it,
    over the held-out prompts (`n` evaluation tasks x every kind of near miss): overall and per kind."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    return accuracy_of(model, tok, n, batch_size)


def accuracy_of(model, tok, n: int = T.EVAL_N, batch_size: int = 64) -> dict:
    """`pairwise_accuracy` of a loaded reward model and its tokenizer."""
    import torch

    pairs = reward_pairs(n)
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
