"""Does the quality of the instruction DPO pairs decide what DPO teaches the toy target? (issue 13)

After `make demo [SEED=n]`, in the same clone: build three variants of the run's DPO set, train DPO from the run's
SFT model on each and on the set itself, at the recipe's settings (lr 2e-5, 1 epoch) and at lr 1e-4 for 2 epochs,
and evaluate the eight models with the run's eval stage (`eval.models`):

- full: the build's DPO set;
- bestsrc: instruction pairs kept only when their source also wrote the prompt's best-rewarded response;
- oracle: instruction pairs kept only when the chosen response matches the prompt's reference answer (the toy world
  knows it; a real run does not);
- noinstr: no instruction pairs at all.

    python benchmarks/toy_dpo_pairs.py --seed 2      # the seed the run directory was made with
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

RECIPE = "recipes/toyworld/imf.yaml"
SETTINGS = {"2e-5": (2.0e-5, 1), "1e-4": (1.0e-4, 2)}


def variants(run: Path, out: Path) -> dict[str, Path]:
    prompts = pd.read_parquet(run / "prompts" / "prompts.parquet").set_index("prompt_id")
    dpo = pd.read_parquet(run / "build" / "dpo.parquet")
    scores = pd.concat(pd.read_parquet(f) for f in glob.glob(str(run / "score" / "*.parquet")))
    scores = scores[scores.model != "target-own"]
    best_source = scores.sort_values("reward", ascending=False).drop_duplicates("prompt_id").set_index("prompt_id")
    instr = (dpo.domain == "instruction").to_numpy()
    same = dpo.model.to_numpy() == best_source.model.reindex(dpo.prompt_id).to_numpy()
    metas = [json.loads(m) for m in prompts.loc[dpo.prompt_id, "meta"]]
    right = np.array(
        [c[0]["content"].strip() == (m.get("reference") or "").strip() for c, m in zip(dpo.chosen, metas, strict=True)]
    )
    keep = {"full": np.ones_like(instr), "bestsrc": ~instr | same, "oracle": ~instr | right, "noinstr": ~instr}
    paths = {}
    for name, mask in keep.items():
        paths[name] = out / f"dpo_{name}.parquet"
        dpo[mask].to_parquet(paths[name])
        n_instr, n_right = int((mask & instr).sum()), int((mask & instr & right).sum())
        print(f"{name}: {int(mask.sum())} pairs, {n_instr} instruction ({n_right} with a right chosen response)")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default="runs/toyworld-imf")
    ap.add_argument("--out", default="runs/toy_dpo_pairs")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe_dpo = yaml.safe_load(Path(RECIPE).read_text())["dpo"]
    models = {}
    for name, path in variants(run, out).items():
        for tag, (lr, epochs) in SETTINGS.items():
            model = f"dpo_{name}_{tag.replace('-', '_')}"
            config = {
                "model": str(run / "sft" / "model"),
                "train_files": [str(path)],
                "output_dir": str(out / model),
                "dpo": {**recipe_dpo, "learning_rate": lr, "num_train_epochs": epochs, "seed": args.seed},
            }
            (out / f"{model}.yaml").write_text(yaml.safe_dump(config))
            subprocess.run([sys.executable, "-m", "fusechat3.cli", "dpo", str(out / f"{model}.yaml")], check=True)
            models[model] = str(out / model)
    extra = "{" + ", ".join(f"{k}: {v}" for k, v in models.items()) + "}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fusechat3.cli",
            "eval",
            RECIPE,
            "--set",
            f"seed={args.seed}",
            "--set",
            f"eval.models={extra}",
            "--models",
            *models,
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
