"""Build the toy world's models deterministically from a seed: `fusechat3 toyworld build`.

Three source models of different architectures and tokenizers, generalists each best at one
domain (`SPECS`: every kind of task of its specialty, part of the others, with near-miss
answers mixed in outside the specialty); a weaker target that knows only one common kind of
task per domain; and a tiny reward model (a real ...ForSequenceClassification, `judge.py`)
that scores instruction responses. The models are small enough (under 1M parameters) to train
in minutes on 2 CPU cores, and are trained for real: weights with too small a std give
near-uniform logits, useless for sampling.

A plain training loop, written by hand on purpose: the toy models are trained once, from
scratch, on generated data, with the loss on the answer tokens only; TRL is what trains
the target later, in the pipeline itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusechat3.toyworld import tasks as T
from fusechat3.toyworld.mistakes import near_miss
from fusechat3.toyworld.tokenizers import build_tokenizer

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Learn:
    """What a model is trained on in one domain: `n` examples of `families` (None: all of the
    domain's), a `noise` fraction of them answered with a near miss (`mistakes.near_miss`)."""

    families: tuple[str, ...] | None
    n: int
    noise: float = 0.0


@dataclass
class ModelSpec:
    """One toy model: architecture, tokenizer, template, and what it is trained on."""

    name: str
    arch: str  # llama | mistral | qwen2 | gpt2 | bert (reward models only: bidirectional)
    tokenizer: str  # char | bpe | bpe-digits
    vocab_size: int
    template: str
    data: dict[str, Learn]  # domain (or "general") -> what is learnt of it
    steps: int = 1300
    lr: float = 3e-3
    batch_size: int = 32
    hidden: int = 128
    layers: int = 4
    heads: int = 4  # head size 32: vLLM on CPU needs >= 32
    kv_heads: int = 4
    intermediate: int = 256
    role: str = "source"  # source | target | reward
    specialty: list[str] = field(default_factory=list)


# The sources are generalists in the paper's regime: each is trained on every domain it answers,
# but knows its specialty whole (every family, few mistakes) and the other domains only in part
# (some families, and a third of those answers wrong). So at the sampling temperature a source is
# right most of the time on its specialty and part of the time elsewhere, with varied samples (the
# measured rates: benchmarks/RESULTS.md): best-vs-worst pairs of one source carry signal in every
# domain, and each source knows families the others miss.
SPECIALTY_NOISE = 0.05
OTHER_NOISE = 0.35
OTHER_N = 8000
# Copying words from the prompt, the skill under every instruction task, as any chat model has it.
GENERAL = Learn(None, 3000)
SOURCE_STEPS = 1800

SPECS: list[ModelSpec] = [
    ModelSpec(
        name="mistral-math",
        arch="mistral",
        tokenizer="bpe-digits",
        vocab_size=400,
        template="mistral",
        data={
            "math": Learn(None, 30000, SPECIALTY_NOISE),
            "code": Learn(("sum", "max"), OTHER_N, OTHER_NOISE),
            "instruction": Learn(("reverse", "upper", "repeat"), 12000, OTHER_NOISE),
            "general": GENERAL,
            "zh": Learn(("word",), 2000, OTHER_NOISE),
        },
        steps=SOURCE_STEPS,
        specialty=["math"],
    ),
    ModelSpec(
        name="qwen2-code",
        arch="qwen2",
        tokenizer="bpe",
        vocab_size=1000,
        template="chatml",
        data={
            "code": Learn(None, 24000, SPECIALTY_NOISE),
            "zh": Learn(None, 8000, SPECIALTY_NOISE),
            "math": Learn(("add", "sub"), OTHER_N, OTHER_NOISE),
            "instruction": Learn(("reverse", "first", "last"), 12000, OTHER_NOISE),
            "general": GENERAL,
        },
        steps=SOURCE_STEPS,
        kv_heads=2,
        specialty=["code", "zh"],
    ),
    ModelSpec(
        name="gpt2-chat",
        arch="gpt2",
        # Word-level copying (reverse, join, ...) is what instruction tasks need: a BPE
        # whose merges make each word one token learns it far faster than characters.
        tokenizer="bpe",
        vocab_size=600,
        template="plain",
        data={
            "instruction": Learn(None, 30000, SPECIALTY_NOISE),
            "math": Learn(("add", "mul"), OTHER_N, OTHER_NOISE),
            "code": Learn(("sum", "count_even", "times"), OTHER_N, OTHER_NOISE),
            "zh": Learn(("num",), 2000, OTHER_NOISE),
            "general": GENERAL,
        },
        steps=SOURCE_STEPS,
        specialty=["instruction"],
    ),
    ModelSpec(
        name="target",
        arch="llama",
        tokenizer="bpe-digits",
        vocab_size=1000,
        template="llama3",
        # The common families a little, plus the general skill of copying from the prompt.
        data={**{d: Learn((f,), 400) for d, f in T.COMMON.items()}, "general": Learn(None, 3000)},
        steps=1200,
        kv_heads=2,
        role="target",
    ),
]
REWARD_SPEC = ModelSpec(
    name="reward",
    # A bidirectional encoder (BertForSequenceClassification, the score on the pooled first token): it ranks a
    # swapped or repeated word below the right answer (97% and 96% of held-out pairs), which the causal 4-layer
    # judges never learnt (59-72%; benchmarks/RESULTS.md). At lr 2e-3 it collapsed to a constant score.
    arch="bert",
    tokenizer="bpe",
    vocab_size=600,
    template="llama3",
    data={"instruction": Learn(None, 20000)},  # 20,000 prompts, each with a near miss of every kind
    steps=15000,  # 3 passes over the 20,000 groups
    lr=5e-4,
    batch_size=4,  # prompts: 36 sequences a step
    kv_heads=2,
    role="reward",
)


# ---------------------------------------------------------------- models


def _config(spec: ModelSpec, tok, num_labels: int | None = None):
    import transformers as tf

    eos = tok.convert_tokens_to_ids(tok.eos_token)
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=eos, bos_token_id=eos)
    if spec.arch == "gpt2":
        cfg = tf.GPT2Config(
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_positions=512,
            n_inner=spec.intermediate,
            **common,
        )
    elif spec.arch == "bert":  # a bidirectional encoder: reward models only (no causal LM)
        cfg = tf.BertConfig(
            hidden_size=spec.hidden,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            intermediate_size=spec.intermediate,
            max_position_embeddings=512,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            # No dropout, as the other toy models (with BERT's 0.1 the judge trained worse in a first try).
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    else:
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[spec.arch]
        cfg = cls(
            hidden_size=spec.hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **common,
        )
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def new_model(spec: ModelSpec, tok, reward: bool = False):
    import transformers as tf

    cfg = _config(spec, tok, num_labels=1 if reward else None)
    if reward:
        if spec.arch == "bert":
            return tf.BertForSequenceClassification(cfg)
        return tf.AutoModelForSequenceClassification.from_config(cfg)
    return tf.AutoModelForCausalLM.from_config(cfg)


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def encode_pair(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the generation prompt and of the response + end-of-turn, apart."""
    p = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    assert full.startswith(p), "toy chat templates render the prompt as a prefix"
    return tok(p, add_special_tokens=False)["input_ids"], tok(full[len(p) :], add_special_tokens=False)["input_ids"]


def as_served(tok, spec: ModelSpec):
    """The tokenizer as `AutoTokenizer` (and so vLLM and TRL) will load it next to this
    model's config. Some model types get a tokenizer class of their own on load (qwen2 ->
    Qwen2Tokenizer, with its own pre-tokenizer), so training data is encoded with the
    tokenizer the model will be served with, never with the in-memory one."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        _config(spec, tok).save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def _training_tasks(spec: ModelSpec, seed: int) -> list[T.Task]:
    """The model's training examples; a `noise` fraction of a domain's answered with near misses."""
    out: list[T.Task] = []
    for domain, learn in sorted(spec.data.items()):
        if domain == "general":
            out += T.general_tasks(learn.n, seed)
            continue
        tasks = T.split_tasks(domain, learn.n, "pretrain", seed=seed, families=learn.families)
        if learn.noise > 0:
            rng = random.Random(f"noise:{spec.name}:{domain}:{seed}")
            tasks = [
                dataclasses.replace(t, response=near_miss(t, rng)) if rng.random() < learn.noise else t for t in tasks
            ]
        out += tasks
    return out


def train_lm(spec: ModelSpec, seed: int, log=print):
    """Train one causal LM of the toy world; returns (model, tokenizer)."""
    import torch

    torch.manual_seed(seed)
    tasks = _training_tasks(spec, seed)
    corpus = [t.prompt + "\n" + t.response for t in tasks] + [
        t.prompt + "\n" + t.response for d in T.FAMILIES for t in T.split_tasks(d, 300, "pretrain", seed=seed + 1)
    ]
    tok = as_served(build_tokenizer(spec.tokenizer, spec.vocab_size, spec.template, corpus), spec)
    model = new_model(spec, tok)
    fit_lm(model, tok, tasks, spec, seed, log)
    return model, tok


def fit_lm(model, tok, tasks: list[T.Task], spec: ModelSpec, seed: int, log) -> None:
    """Causal-LM training on `tasks`, the loss on the answer tokens only."""
    examples = [encode_pair(tok, t.prompt, t.response) for t in tasks]

    def loss_of(idx: list[int]):
        ids, mask = batch([examples[i][0] + examples[i][1] for i in idx], tok.pad_token_id)
        labels = ids.new_full(ids.shape, -100)
        for r, i in enumerate(idx):
            p, a = examples[i]
            labels[r, len(p) : len(p) + len(a)] = ids.new_tensor(a)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    fit(model, len(examples), spec, seed, loss_of, log)


def batch(seqs: list[list[int]], pad_id: int):
    """Right-padded input ids and attention mask of token sequences."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


def fit(model, n_examples: int, spec: ModelSpec, seed: int, loss_of, log) -> None:
    """The training loop: AdamW, warmup + cosine, `spec.steps` batches of `spec.batch_size`
    examples drawn with replacement; `loss_of(indices)` is the batch's loss."""
    import torch

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    t0 = time.time()
    ema = None
    for step in range(spec.steps):
        idx = [rng.randrange(n_examples) for _ in range(spec.batch_size)]
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec.steps, spec.lr)
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % 250 == 0 or step + 1 == spec.steps:
            log(f"  {spec.name}: step {step + 1}/{spec.steps} loss {ema:.4f} ({time.time() - t0:.0f}s)")
    model.eval()


# ---------------------------------------------------------------- build all


def _save(model, tok, spec: ModelSpec, out: Path, seed: int, seconds: float) -> None:
    if out.exists():
        shutil.rmtree(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = model.config.eos_token_id
        model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    card = {
        "name": spec.name,
        "role": spec.role,
        "specialty": spec.specialty,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "spec": asdict(spec),
    }
    (out / "toyworld.json").write_text(json.dumps(card, indent=1))


def _build_one(spec: ModelSpec, out_dir: Path, seed: int, threads: int) -> float:
    """Train and save one model; runs in a worker process (see `build`)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.time()
    print(f"toyworld: training {spec.name} ({spec.arch}, {spec.tokenizer} tokenizer, {spec.steps} steps)", flush=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    from fusechat3.toyworld.judge import train_reward

    model, tok = train_reward(spec, seed, log) if spec.role == "reward" else train_lm(spec, seed, log)
    _save(model, tok, spec, out_dir / spec.name, seed, time.time() - t0)
    return time.time() - t0


def build(
    out_dir: Path | None = None,
    seed: int = 0,
    only: list[str] | None = None,
    jobs: int = 2,
    log=print,
    specs: list[ModelSpec] | None = None,
) -> Path:
    """Train every toy model (or those in `only`) and save them under `out_dir`.

    `jobs` models train at once, each in its own process with one thread: on 2 cores this
    is faster than one process with two threads (small matmuls scale badly across threads),
    and the result does not depend on it (each model is seeded on its own).
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    out_dir = Path(out_dir or ASSETS)
    out_dir.mkdir(parents=True, exist_ok=True)
    every = specs or [*SPECS, REWARD_SPEC]  # `specs`: other model definitions (tests use tiny ones)
    unknown = sorted(set(only or ()) - {s.name for s in every})
    if unknown:
        raise ValueError(f"toyworld build: unknown model(s) {unknown}; use {[s.name for s in every]}")
    specs = [s for s in every if not only or s.name in only]
    # Longest first, so that the workers finish together.
    specs.sort(key=lambda s: -s.steps * s.batch_size)
    t_all = time.time()
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = {s.name: pool.submit(_build_one, s, out_dir, seed, 1 if jobs > 1 else 2) for s in specs}
        for name, fut in futures.items():
            log(f"toyworld: {name} done in {fut.result():.0f}s")
    log(f"toyworld: built in {time.time() - t_all:.0f}s -> {out_dir}")
    return out_dir
