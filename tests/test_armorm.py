"""ArmoRM loaded natively (fusechat3.scoring.armorm): a tiny random checkpoint in the published layout (config
field names, `model_type: "llama"` with an `auto_map` to remote code that is NOT in the folder, the published
parameter names), scored through `RewardModel` and checked against an independent float64 computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusechat3.errors import UserError  # noqa: E402
from fusechat3.scoring.reward import RewardModel  # noqa: E402

# The published RLHFlow/ArmoRM-Llama3-8B-v0.1 config.json, as published (huggingface.co, commit 23a4ca8).
PUBLISHED_CONFIG = {
    "_name_or_path": "RLHFlow/ArmoRM-Llama3-8B-v0.1 ",
    "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"},
    "architectures": ["LlamaForRewardModelWithGating"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "id2label": {"0": "LABEL_0"},
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "label2id": {"LABEL_0": 0},
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pad_token_id": 128256,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.40.0",
    "use_cache": False,
    "vocab_size": 128257,
    "num_objectives": 19,
    "gating_temperature": 10,
    "gating_hidden_dim": 1024,
    "gating_n_hidden": 3,
}


def published_layout(num_layers: int, gating_n_hidden: int) -> dict[str, str]:
    """The published parameter names (of its modeling_custom.py: `model` = LlamaModel, `regression_layer`,
    `reward_transform_matrix`, `gating.logit_scale`, `gating.layers.i`) -> the shape, symbolically
    (H hidden, I intermediate, V vocab, Q/KV query/key-value widths, K objectives, G gating width)."""
    keys = {"model.embed_tokens.weight": "V,H", "model.norm.weight": "H"}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        keys |= {
            p + "input_layernorm.weight": "H",
            p + "post_attention_layernorm.weight": "H",
            p + "self_attn.q_proj.weight": "Q,H",
            p + "self_attn.k_proj.weight": "KV,H",
            p + "self_attn.v_proj.weight": "KV,H",
            p + "self_attn.o_proj.weight": "H,Q",
            p + "mlp.gate_proj.weight": "I,H",
            p + "mlp.up_proj.weight": "I,H",
            p + "mlp.down_proj.weight": "H,I",
        }
    keys |= {"regression_layer.weight": "K,H", "reward_transform_matrix": "K,K", "gating.logit_scale": "1"}
    widths = ["H"] + ["G"] * gating_n_hidden + ["K"]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        keys |= {f"gating.layers.{i}.weight": f"{b},{a}", f"gating.layers.{i}.bias": b}
    return keys


def _shape(symbolic: str, config: dict) -> tuple[int, ...]:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    sizes = {
        "H": config["hidden_size"],
        "I": config["intermediate_size"],
        "V": config["vocab_size"],
        "Q": config["num_attention_heads"] * head_dim,
        "KV": config["num_key_value_heads"] * head_dim,
        "K": config["num_objectives"],
        "G": config["gating_hidden_dim"],
        "1": 1,
    }
    return tuple(sizes[s] for s in symbolic.split(","))


# --- the tiny checkpoint -----------------------------------------------------------------------------------------

WORDS = "the cat sat on a mat and dog ran to red blue green what is sum two three four user assistant system".split()
# Llama-3's chat template, shortened (no date / tool lines): header tokens, "\n\n", content, <|eot_id|>.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "num_objectives": 19,
    "gating_temperature": 2,  # published: 10; lower here so that the gate is far from uniform
    "gating_hidden_dim": 16,
    "gating_n_hidden": 3,
}


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=180, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def armo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ArmoRM folder as published: config.json (model_type llama, auto_map to a modeling_custom.py that
    is absent), model.safetensors with the published key names, random weights (seed 0)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny-armorm")
    tokenizer = _tokenizer(path)
    config = {
        "architectures": ["LlamaForRewardModelWithGating"],
        "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"},
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "use_cache": False,
        **TINY,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for key, symbolic in published_layout(TINY["num_hidden_layers"], TINY["gating_n_hidden"]).items():
        shape = _shape(symbolic, config)
        if key.endswith("norm.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key == "gating.logit_scale":
            value = torch.tensor([1.7])
        elif key == "reward_transform_matrix":  # not the identity: the transform must be applied
            value = torch.eye(shape[0]) + 0.3 * torch.randn(shape, generator=gen)
        elif key.startswith(("gating.", "regression_layer")):
            value = torch.randn(shape, generator=gen) * (1.0 if key.endswith("bias") else shape[-1] ** -0.5 * 2)
        else:
            value = 0.05 * torch.randn(shape, generator=gen)
        weights[key] = value.float().contiguous()
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _conversations() -> list[list[dict]]:
    def say(i: int, n: int) -> str:
        return " ".join(WORDS[(i * 5 + k * 3) % len(WORDS)] for k in range(n))

    return [
        [{"role": "user", "content": say(0, 3)}, {"role": "assistant", "content": say(1, 2)}],
        [
            {"role": "system", "content": say(2, 4)},
            {"role": "user", "content": say(3, 6)},
            {"role": "assistant", "content": say(4, 9)},
        ],
        [  # multi-turn: the gate reads the prompt's end before the LAST assistant turn
            {"role": "user", "content": say(5, 5)},
            {"role": "assistant", "content": say(6, 4)},
            {"role": "user", "content": say(7, 3)},
            {"role": "assistant", "content": say(8, 12)},
        ],
        [{"role": "user", "content": say(9, 1)}, {"role": "assistant", "content": say(10, 30)}],
    ]


# --- the independent float64 reference ---------------------------------------------------------------------------


def _reference_scores(path: Path, conversations: list[list[dict]]) -> list[float]:
    """Template -> ids; backbone: transformers' LlamaModel in float64 with the checkpoint's `model.*` weights;
    the head in numpy float64 from the raw safetensors: reward at the last token, gate at the last <|eot_id|>
    of the prompt (the conversation without its final assistant turn), ReLU MLP, softmax(./T) * logit_scale,
    score = sum(gate * (rewards @ transform))."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "auto_map", "model_type")})
    config._attn_implementation = "eager"
    backbone = LlamaModel(config).double().eval()
    backbone.load_state_dict(
        {k.removeprefix("model."): torch.from_numpy(v).double() for k, v in weights.items() if k.startswith("model.")},
        strict=True,
    )
    w = {k: v.astype(np.float64) for k, v in weights.items() if not k.startswith("model.")}
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    scores = []
    for conv in conversations:
        ids = tokenizer(tokenizer.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
        prompt = tokenizer(tokenizer.apply_chat_template(conv[:-1], tokenize=False), add_special_tokens=False)
        prompt_ids = prompt["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and prompt_ids[-1] == eot
        gate_at, reward_at = len(prompt_ids) - 1, len(ids) - 1
        with torch.no_grad():
            hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        rewards = w["regression_layer.weight"] @ hidden[reward_at]
        x = hidden[gate_at]
        for i in range(raw["gating_n_hidden"]):
            x = np.maximum(w[f"gating.layers.{i}.weight"] @ x + w[f"gating.layers.{i}.bias"], 0.0)
        n = raw["gating_n_hidden"]
        logits = (w[f"gating.layers.{n}.weight"] @ x + w[f"gating.layers.{n}.bias"]) / raw["gating_temperature"]
        gate = np.exp(logits - logits.max())
        gate = gate / gate.sum() * w["gating.logit_scale"][0]
        scores.append(float(np.sum(gate * (rewards @ w["reward_transform_matrix"]))))
    return scores


# --- the tests ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def armo(armo_dir: Path):
    rm = RewardModel(str(armo_dir), batch_size=8, max_length=256, device="cpu")
    yield rm
    rm.close()


def test_loads_natively_without_remote_code(armo: RewardModel, armo_dir: Path) -> None:
    from fusechat3.scoring.armorm import LlamaForRewardModelWithGating

    assert not (armo_dir / "modeling_custom.py").exists()
    assert type(armo.model) is LlamaForRewardModelWithGating
    assert armo.pad_id == armo.tokenizer.pad_token_id
    # the gating pattern in this tokenizer's ids: <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
    tok = armo.tokenizer
    assert armo.model.gating_token_pattern[:2] == tok.convert_tokens_to_ids(["<|eot_id|>", "<|start_header_id|>"])


def test_trust_remote_code_still_loads_the_native_class(armo_dir: Path) -> None:
    from fusechat3.scoring.armorm import LlamaForRewardModelWithGating

    with RewardModel(str(armo_dir), max_length=256, device="cpu", trust_remote_code=True) as rm:
        assert type(rm.model) is LlamaForRewardModelWithGating


def test_scores_match_an_independent_float64_computation(armo: RewardModel, armo_dir: Path) -> None:
    conversations = _conversations()
    expected = _reference_scores(armo_dir, conversations)
    with torch.no_grad():  # the model's float64 copy, batched with right padding
        armo.model.double()
        try:
            got = armo.score(conversations)
        finally:
            armo.model.float()
    assert [why for _, why in got] == ["ok"] * len(conversations)
    assert [r for r, _ in got] == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.05  # distinct scores: a mix-up would show


def test_float32_scores_do_not_depend_on_the_batch(armo: RewardModel, armo_dir: Path) -> None:
    conversations = _conversations()
    short = conversations[0]
    alone = armo.score([short])[0][0]
    batched = armo.score([conversations[3], short, conversations[2], conversations[1]])
    assert batched[1][0] == pytest.approx(alone, abs=1e-5)
    singles = [armo.score([c])[0][0] for c in conversations]
    assert [r for r, _ in armo.score(conversations)] == pytest.approx(singles, abs=1e-5)
    assert singles == pytest.approx(_reference_scores(armo_dir, conversations), abs=1e-4)


def test_output_fields_and_the_formula(armo: RewardModel) -> None:
    conv = _conversations()[2]
    ids = armo.tokenizer(armo.tokenizer.apply_chat_template(conv, tokenize=False), add_special_tokens=False)
    with torch.no_grad():
        out = armo.model(input_ids=torch.tensor([ids["input_ids"]]))
    k = armo.model.config.num_objectives
    assert out.rewards.shape == (1, k) and out.gating_output.shape == (1, k) and out.score.shape == (1,)
    assert torch.equal(out.logits, out.score)
    assert float(out.gating_output.sum()) == pytest.approx(1.7, abs=1e-5)  # softmax * logit_scale
    mixed = (out.gating_output * (out.rewards @ armo.model.reward_transform_matrix)).sum(-1)
    assert torch.allclose(mixed, out.score)


def test_weight_names_match_the_published_layout(armo: RewardModel, armo_dir: Path) -> None:
    from safetensors import safe_open

    layout = published_layout(TINY["num_hidden_layers"], TINY["gating_n_hidden"])
    state = armo.model.state_dict()
    assert set(state) == set(layout)
    with safe_open(str(armo_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():  # every weight of the checkpoint was loaded, not initialised
            assert torch.equal(state[key].float(), f.get_tensor(key)), key


def test_the_8b_config_builds_the_published_shapes() -> None:
    """The published 8B config on the meta device: every published name with its shape ([19, 1024] last gate)."""
    from fusechat3.scoring.armorm import LlamaForRewardModelWithGating, armorm_config, is_armorm

    assert is_armorm(PUBLISHED_CONFIG)
    config = armorm_config(PUBLISHED_CONFIG)  # what load_armorm builds from the published config.json
    assert (config.pad_token_id, config.gating_temperature, config.num_objectives) == (128256, 10, 19)
    with torch.device("meta"):
        model = LlamaForRewardModelWithGating(config)
    layout = published_layout(32, 3)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: _shape(v, PUBLISHED_CONFIG) for k, v in layout.items()}
    assert shapes["gating.layers.3.weight"] == (19, 1024) and shapes["reward_transform_matrix"] == (19, 19)
    assert model.gating_token_pattern == [128009, 128006, 78191, 128007, 271]


def test_vllm_backend_refuses_armorm_in_one_line(armo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusechat3.scoring import reward_vllm

    def no_engine(*args: object, **kwargs: object) -> None:
        raise AssertionError("an engine was started")

    monkeypatch.setattr(reward_vllm, "open_llm", no_engine)
    with pytest.raises(UserError) as err:
        RewardModel(str(armo_dir), max_length=256, backend="vllm")
    message = str(err.value)
    assert "\n" not in message and "backend: transformers" in message and "LlamaForRewardModelWithGating" in message


def test_importing_the_reward_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, fusechat3.scoring.reward; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
