"""Checks that a merge's inputs can be merged, before mergekit reads a tensor: one line naming the models
and the first tensor that does not fit (mergekit itself fails deep in its executor, or pads silently).

Only file headers are read: each model's config.json, its tokenizer's vocabulary and the safetensors
headers (names and shapes), from the folder mergekit will read (a Hub id is downloaded to the same
cache mergekit uses).
"""

from __future__ import annotations

import json
from pathlib import Path

from fusechat3.errors import UserError


def local_folder(ref) -> Path:
    """The local folder of a mergekit ModelReference (a Hub id is fetched into the Hub cache)."""
    path = Path(ref.model.path)
    if path.is_dir():
        return path
    try:
        return Path(ref.local_path())
    except Exception as e:  # noqa: BLE001 - the Hub client's errors differ by version; one line for the user
        raise UserError(
            f"model {ref.model.path!r}: not a local folder, and it could not be fetched from the Hub "
            f"({type(e).__name__}: check the id, your token, and HF_HUB_OFFLINE)"
        ) from None


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """{tensor name: shape} from the safetensors headers; None for a model without safetensors files."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def _config(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"model {name}: no config.json in {folder}: not a Hugging Face model folder") from None


def _vocab(folder: Path) -> dict | None:
    f = folder / "tokenizer.json"
    if not f.is_file():
        return None
    model = json.loads(f.read_text(encoding="utf-8")).get("model", {})
    vocab = model.get("vocab")
    return vocab if isinstance(vocab, dict) else None


def check_inputs(conf) -> str | None:
    """Raise a UserError if `conf`'s models cannot be merged; returns the base model's stored dtype (or None)."""
    refs = conf.referenced_models()
    first = conf.base_model or refs[0]
    names = {r: str(r.model.path) for r in refs}
    folders = {r: local_folder(r) for r in refs}
    configs = {r: _config(folders[r], names[r]) for r in refs}
    tokenizer_option = conf.tokenizer_source is not None or conf.tokenizer is not None
    ref_arch = configs[first].get("architectures")
    for r in refs:
        arch = configs[r].get("architectures")
        if not arch:
            raise UserError(
                f'model {names[r]}: its config.json names no architectures (e.g. "architectures": '
                f'["LlamaForCausalLM"]), which mergekit needs to know its tensors'
            )
        if arch != ref_arch:
            raise UserError(
                f"cannot merge {names[r]} ({', '.join(arch or ['no architecture'])}) with {names[first]} "
                f"({', '.join(ref_arch or ['no architecture'])}): different architectures"
            )
    vocab_first = _vocab(folders[first])
    shapes_first = tensor_shapes(folders[first])
    for r in refs:
        if r == first:
            continue
        vocab = _vocab(folders[r])
        if not tokenizer_option and vocab is not None and vocab_first is not None and vocab != vocab_first:
            raise UserError(
                f"cannot merge {names[r]} with {names[first]}: different vocabularies ({len(vocab)} and "
                f"{len(vocab_first)} tokens); set tokenizer_source: base (or union) to merge them on one tokenizer"
            )
        shapes = tensor_shapes(folders[r])
        if shapes is None or shapes_first is None:
            continue  # .bin checkpoints: mergekit reads them and checks as it goes
        for name, shape in shapes_first.items():
            other = shapes.get(name)
            if other is None:
                raise UserError(f"cannot merge {names[r]} with {names[first]}: {names[r]} has no tensor {name}")
            if other != shape:
                vocab_dim = _is_vocab_dim(shape, other, configs[first], configs[r])
                if vocab_dim and tokenizer_option:
                    continue  # mergekit aligns the embedding rows to the chosen tokenizer
                hint = "; set tokenizer_source: base (or union)" if vocab_dim else ""
                raise UserError(
                    f"cannot merge {names[r]} with {names[first]}: tensor {name} is {list(other)} in one and "
                    f"{list(shape)} in the other{hint}"
                )
    dtype = configs[first].get("dtype") or configs[first].get("torch_dtype")
    return dtype if isinstance(dtype, str) else None


def _is_vocab_dim(a: tuple, b: tuple, cfg_a: dict, cfg_b: dict) -> bool:
    """Whether two shapes differ only in one dimension that is each model's vocabulary size (an embedding)."""
    if len(a) != len(b):
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return len(diff) == 1 and a[diff[0]] == cfg_a.get("vocab_size") and b[diff[0]] == cfg_b.get("vocab_size")
