"""Random-weight models in the real layout, as merge inputs for the merge benchmarks: a transformers config, its
tensors' names and shapes (the model built on the meta device, no memory), and the weights written tensor by
tensor into safetensors shards with a `model.safetensors.index.json` (what `save_pretrained` writes), plus the
toy target's tokenizer. The base is N(0, 0.02); each fine-tuned model is the base plus 0.002 x N(0, 1) x
(its index + 1), so the task vectors differ in size. Never more than one tensor is held in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def llama_config(hidden: int = 1024, layers: int = 12, vocab: int = 32000):
    """A Llama of about 267M parameters at the defaults: 1.07 GB in float32."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=vocab,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )


def shapes_of(config) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_model(folder: Path, config, index: int | None, shard_bytes: int, seed: int = 0) -> int:
    """The base (index None) or fine-tuned model `index`, in shards of about `shard_bytes`; its size in bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "fusechat3" / "toyworld" / "assets" / "target" / name, folder / name)
    shapes = shapes_of(config)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = total = 0
    files: list[list[str]] = []

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            files.append(list(shard))
            for k in shard:
                weight_map[k] = name
            shard, size = {}, 0

    for i, (name, shape) in enumerate(sorted(shapes.items())):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        t = 0.02 * torch.randn(shape, generator=g)
        if index is not None:
            t += (
                0.002
                * (index + 1)
                * torch.randn(shape, generator=torch.Generator().manual_seed(10_000_019 * (index + 1) + i))
            )
        nbytes = t.numel() * 4
        if size and size + nbytes > shard_bytes:
            flush()
        shard[name] = t
        size += nbytes
        total += nbytes
    flush()
    # The shard names say "of N" as save_pretrained's do.
    n = len(files)
    renamed = {}
    for j in range(n):
        old = folder / f"model-{j + 1:05d}.safetensors"
        new = f"model-{j + 1:05d}-of-{n:05d}.safetensors"
        old.rename(folder / new)
        renamed[old.name] = new
    index_json = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=1))
    return total


def write_inputs(root: Path, n_models: int, shard_bytes: int, config=None) -> tuple[Path, list[Path], int]:
    """(base, fine-tuned models, bytes per model) under `root`."""
    config = config or llama_config()
    base = root / "base"
    size = write_model(base, config, None, shard_bytes)
    models = [root / f"ft{i}" for i in range(n_models)]
    for i, m in enumerate(models):
        write_model(m, config, i, shard_bytes)
    return base, models, size
