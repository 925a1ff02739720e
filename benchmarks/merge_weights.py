"""VaRM's and SCE's per-tensor weights on a run's pairwise-fused targets: how far from uniform they are.

Reads the target before fusion (the base) and each `fuse-train/<source>/model` of a run made with
`explicit.pairwise: true` (e.g. `make demo-fusechat`), computes per tensor the weights VaRM uses
(mean(δ_i²), normalised) and FuseChat's SCE uses (the same over the top-τ variance mask), and prints their
mean, minimum and maximum over the tensors per model, and each model's mean |δ|.

    python benchmarks/merge_weights.py runs/toyworld-fusechat [--tau 0.1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from fusechat3.merging.methods import energy_weights, topk_variance_mask
from fusechat3.recipe import resolve_model


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory with fuse-train/<source>/model folders")
    ap.add_argument("--base", default="toyworld:target", help="the pivot (default: toyworld:target)")
    ap.add_argument("--tau", type=float, default=0.1, help="SCE's select_topk")
    args = ap.parse_args()
    inputs = sorted(p.parent for p in Path(args.run).glob("fuse-train/*/model/config.json"))
    inputs = [p for p in inputs if p.parent.name != "lm_only"]
    if len(inputs) < 2:
        raise SystemExit(f"merge_weights: fewer than two fuse-train/<source>/model folders in {args.run}")
    base = _weights(Path(resolve_model(args.base)))
    models = [_weights(p) for p in inputs]
    varm, sce, size = [], [], []
    for name, b in base.items():
        d = torch.stack([m[name].float() - b.float() for m in models])
        varm.append(energy_weights(d))
        sce.append(energy_weights(d * topk_variance_mask(d, args.tau)))
        size.append(d.abs().flatten(1).mean(1))
    varm, sce, size = torch.stack(varm), torch.stack(sce), torch.stack(size)
    print(f"{len(base)} tensors; weights over the tensors (uniform would be {1 / len(models):.3f})")
    print(f"| model | mean abs(delta) | VaRM mean | VaRM min-max | SCE (tau {args.tau}) mean | SCE min-max |")
    print("|---|---|---|---|---|---|")
    for i, p in enumerate(inputs):
        print(
            f"| {p.parent.name} | {size[:, i].mean():.4f} | {varm[:, i].mean():.3f} | "
            f"{varm[:, i].min():.3f}-{varm[:, i].max():.3f} | {sce[:, i].mean():.3f} | {sce[:, i].min():.3f}-{sce[:, i].max():.3f} |"
        )


if __name__ == "__main__":
    main()
