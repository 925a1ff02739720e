"""`fusechat3 merge <config>` end to end on toy models: a normal Hugging Face folder that loads in transformers and
in vLLM and generates, float32 numerics for bfloat16 inputs, the MergeBench presets, and one-line errors for
inputs that cannot be merged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fusechat3.cli import main
from fusechat3.recipe import resolve_model

TARGET = Path(resolve_model("toyworld:target"))


def _variant(folder: Path, seed: int, scale: float = 0.02, dtype: torch.dtype | None = None) -> Path:
    """A copy of the toy target with its weights moved by scale x N(0, 1) (a stand-in for a fine-tuned model)."""
    shutil.copytree(TARGET, folder, dirs_exist_ok=True)
    weights = load_file(str(TARGET / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    moved = {k: (v + scale * torch.randn(v.shape, generator=g)).to(dtype or v.dtype) for k, v in weights.items()}
    save_file(moved, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if dtype is not None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["dtype"] = str(dtype).removeprefix("torch.")
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _body(out: Path, models, **method) -> dict:
    """A merge config of `models` onto the toy target (method: merge_method=... or preset=...)."""
    return {
        **method,
        "base_model": "toyworld:target",
        "output_dir": str(out),
        "models": [{"model": str(m)} for m in models],
    }


def _config(tmp_path: Path, body: dict, name: str = "merge.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return _variant(root / "a", 1), _variant(root / "b", 2, scale=0.06)


def test_varm_merge_is_a_model_folder_that_loads_and_generates(tmp_path, two_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusechat3.sampling import get_sampler
    from fusechat3.sampling.params import GenParams

    out = tmp_path / "varm"
    body = _body(out, two_models, merge_method="varm")
    assert main(["merge", _config(tmp_path, body)]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "mergekit_config.yml"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "varm" in card and "mean(δ_i²)" in card and "fusechat3 merge" in card and str(two_models[0]) in card
    # the weights are VaRM's, per tensor
    base = load_file(str(TARGET / "model.safetensors"))
    ins = [load_file(str(m / "model.safetensors")) for m in two_models]
    merged = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    d = np.stack([i[name].double().numpy() - base[name].double().numpy() for i in ins])
    w = (d**2).reshape(2, -1).mean(1)
    w /= w.sum()
    assert w[1] > 0.8  # the larger task vector weighs more
    ref = base[name].double().numpy() + np.tensordot(w, d, axes=1)
    assert np.linalg.norm(merged[name].double().numpy() - ref) / np.linalg.norm(ref) <= 1e-6

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "add 2 3"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids.shape[1]

    sampler = get_sampler("vllm", str(out), max_model_len=256)
    try:
        (outs,) = sampler.generate(
            [[{"role": "user", "content": "add 2 3"}]], GenParams(n=1, temperature=0.0, max_tokens=8)
        )
    finally:
        sampler.close()
    assert outs[0].finish_reason in ("stop", "length")


def test_bfloat16_inputs_are_merged_in_float32_and_stored_as_bfloat16(tmp_path):
    a = _variant(tmp_path / "a", 3, dtype=torch.bfloat16)
    b = _variant(tmp_path / "b", 4, scale=0.05, dtype=torch.bfloat16)
    base = _variant(tmp_path / "base", 5, scale=0.0, dtype=torch.bfloat16)
    out = tmp_path / "out"
    body = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "output_dir": str(out),
        "parameters": {"weight": 0.3},
        "models": [{"model": str(a)}, {"model": str(b)}],
    }
    assert main(["merge", _config(tmp_path, body)]) == 0
    merged = load_file(str(out / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    assert merged[name].dtype == torch.bfloat16
    tb, ta, tbb = (load_file(str(m / "model.safetensors"))[name].double() for m in (base, a, b))
    exact = (tb + 0.3 * (ta - tb) + 0.3 * (tbb - tb)).to(torch.bfloat16)
    in_bf16 = tb.bfloat16() + 0.3 * (ta.bfloat16() - tb.bfloat16()) + 0.3 * (tbb.bfloat16() - tb.bfloat16())
    # float32 then one rounding to bfloat16: the exact result's rounding but for rare double roundings; merging in
    # bfloat16 itself (mergekit's default for bfloat16 inputs) rounds at every step
    assert (merged[name] == exact).float().mean() > 0.99
    assert (in_bf16 == exact).float().mean() < 0.9


def test_presets_model_soup_is_the_average_and_dare_repeats_with_its_seed(tmp_path, two_models):
    soup = tmp_path / "soup"
    body = _body(soup, two_models, preset="model_soup")
    assert main(["merge", _config(tmp_path, body)]) == 0
    name = "model.norm.weight"
    ins = [load_file(str(m / "model.safetensors"))[name] for m in two_models]
    assert torch.allclose(load_file(str(soup / "model.safetensors"))[name], (ins[0] + ins[1]) / 2, atol=1e-6)
    outs = []
    for i in (1, 2):
        body = _body(tmp_path / f"dare{i}", two_models, preset="dare", seed=7)
        assert main(["merge", _config(tmp_path, body, f"dare{i}.yaml")]) == 0
        outs.append(load_file(str(tmp_path / f"dare{i}" / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(outs[0], outs[1])


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_inputs_that_cannot_be_merged_are_one_line(tmp_path, capsys, two_models):
    a = str(two_models[0])
    # different architectures
    body = {
        "merge_method": "ties",
        "base_model": "toyworld:target",
        "models": [{"model": a}, {"model": "toyworld:qwen2-code"}],
        "parameters": {"weight": 1.0},
    }
    line = _error(capsys, ["merge", _config(tmp_path, body)])
    assert "different architectures" in line and "qwen2-code" in line and "LlamaForCausalLM" in line
    # a tensor of another shape
    odd = _variant(tmp_path / "odd", 9)
    w = load_file(str(odd / "model.safetensors"))
    w["model.layers.2.mlp.up_proj.weight"] = w["model.layers.2.mlp.up_proj.weight"][:100].contiguous()
    save_file(w, str(odd / "model.safetensors"), metadata={"format": "pt"})
    body["models"] = [{"model": a}, {"model": str(odd)}]
    line = _error(capsys, ["merge", _config(tmp_path, body)])
    assert "model.layers.2.mlp.up_proj.weight" in line and "[100, 128]" in line and str(odd) in line
    # another vocabulary, without a tokenizer option
    other = _variant(tmp_path / "vocab", 10)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    first = next(iter(vocab))
    vocab[first + "x"] = vocab.pop(first)
    (other / "tokenizer.json").write_text(json.dumps(tj))
    body["models"] = [{"model": a}, {"model": str(other)}]
    line = _error(capsys, ["merge", _config(tmp_path, body)])
    assert "different vocabularies" in line and "tokenizer_source" in line
    # an unknown method, an unknown preset
    line = _error(capsys, ["merge", _config(tmp_path, {**body, "merge_method": "sce_fusechta"})])
    assert "did you mean 'sce_fusechat'" in line
    line = _error(capsys, ["merge", _config(tmp_path, {"preset": "tie", "models": body["models"]})])
    assert "did you mean 'ties'" in line
    # a mistaken option of mergekit's
    body = {
        "merge_method": "linear",
        "models": [{"model": a}, {"model": str(two_models[1])}],
        "parameters": {"weight": 1.0},
    }
    line = _error(capsys, ["merge", _config(tmp_path, {**body, "options": {"out_shard_size": "lots"}})])
    assert "options.out_shard_size" in line and "1B" in line
    line = _error(capsys, ["merge", _config(tmp_path, {**body, "options": {"no_such_option": 1}})])
    assert "options.no_such_option" in line
    # a Hub id that cannot be fetched (the tests run offline)
    line = _error(
        capsys, ["merge", _config(tmp_path, {**body, "models": [{"model": a}, {"model": "nobody/no-such-model"}]})]
    )
    assert "'nobody/no-such-model'" in line and "could not be fetched from the Hub" in line


def test_the_paper_recipes_carry_the_papers_settings():
    from fusechat3.merging.merge import parse_merge_config
    from fusechat3.merging.presets import PRESETS

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    sce, _ = parse_merge_config(yaml.safe_load((recipes / "fusechat2" / "merge_sce.yaml").read_text()), "sce")
    assert sce.merge_method == "sce_fusechat" and sce.parameters["select_topk"] == 0.1
    assert len(sce.referenced_models()) == 6  # the pivot and five pairwise targets
    varm, _ = parse_merge_config(yaml.safe_load((recipes / "fusechat1" / "merge_varm.yaml").read_text()), "varm")
    assert varm.merge_method == "varm" and len(varm.referenced_models()) == 3
    # MergeBench's settings
    assert PRESETS["task_arithmetic"].parameters == {"weight": 0.4}
    assert PRESETS["ties"].parameters["density"] == 0.3 and PRESETS["ties"].parameters["lambda"] == 0.4
    assert PRESETS["dare"].parameters["density"] == pytest.approx(0.1) and PRESETS["dare"].parameters["weight"] == 0.4
    assert PRESETS["consensus_ta"].parameters == {"k": 2, "lam": 0.2, "scaling": 0.4}
    for name in PRESETS:
        conf, _ = parse_merge_config(yaml.safe_load((recipes / "mergebench" / f"{name}.yaml").read_text()), name)
        assert conf.merge_method == PRESETS[name].method
    soup, _ = parse_merge_config(yaml.safe_load((recipes / "mergebench" / "model_soup.yaml").read_text()), "soup")
    assert soup.parameters["weight"] == pytest.approx(1 / 5)
