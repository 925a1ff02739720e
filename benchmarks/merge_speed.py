"""Merge throughput: the same TIES merge through `fusechat3 merge` and through mergekit's own CLI
(`mergekit-yaml`), beside a plain copy of the input files (the I/O floor), in one run; VaRM and SCE timed too.

Inputs (`merge_inputs.py`): a random-weight Llama base and three fine-tuned models of 1.07 GB each in float32
(hidden 1024, 12 layers), in shards of about 400 MB, written once into a temporary folder (they stay in the
page cache: every contender reads them from memory). Each contender runs as its own process, `--repeats`
times, in turns; its time is the median, with the range. GB/s is the input bytes read (4 models) over the
time. The last line is `ratio <ours / mergekit>` in GB/s (>= 1.0: ours is not slower).

    python benchmarks/merge_speed.py               # about 6 minutes and 5 GB of disk on 2 CPU cores
    python benchmarks/merge_speed.py --hidden 256  # a small check of the script itself
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_inputs import llama_config, write_inputs  # noqa: E402

TIES = {"merge_method": "ties", "parameters": {"weight": 1.0, "density": 0.3}, "dtype": "float32"}


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"merge_speed: {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def _copy(inputs: list[Path], out: Path) -> None:
    for folder in inputs:
        for f in folder.glob("*.safetensors"):
            dest = out / folder.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, models, size = write_inputs(root / "in", 3, 400 * 10**6, llama_config(hidden=args.hidden))
        inputs = [base, *models]
        total = size * len(inputs)

        def config(name: str, extra: dict) -> Path:
            body = {**extra, "base_model": str(base), "models": [{"model": str(m)} for m in models]}
            body["output_dir"] = str(root / f"out-{name}")
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump(body))
            return path

        ties = config("ties", TIES)
        mk_conf = root / "ties-mergekit.yaml"
        mk_conf.write_text(
            yaml.safe_dump({k: v for k, v in yaml.safe_load(ties.read_text()).items() if k != "output_dir"})
        )
        contenders = {
            "copy of the input files (I/O floor)": lambda i: _timed(
                [
                    sys.executable,
                    "-c",
                    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"from merge_speed import _copy; from pathlib import Path; "
                    f"_copy([Path(p) for p in {[str(p) for p in inputs]!r}], Path({str(root / f'copy{i}')!r}))",
                ]
            ),
            "mergekit-yaml, ties": lambda i: _timed(
                [str(bin_dir / "mergekit-yaml"), str(mk_conf), str(root / f"out-mk{i}")]
            ),
            "fusechat3 merge, ties": lambda i: _timed(
                [str(bin_dir / "fusechat3"), "merge", str(ties), "--set", f"output_dir={root / f'out-ours{i}'}"]
            ),
            "fusechat3 merge, varm": lambda i: _timed(
                [
                    str(bin_dir / "fusechat3"),
                    "merge",
                    str(config("varm", {"merge_method": "varm"})),
                    "--set",
                    f"output_dir={root / f'out-varm{i}'}",
                ]
            ),
            "fusechat3 merge, sce_fusechat (top-tau 0.1)": lambda i: _timed(
                [
                    str(bin_dir / "fusechat3"),
                    "merge",
                    str(config("sce", {"merge_method": "sce_fusechat", "parameters": {"select_topk": 0.1}})),
                    "--set",
                    f"output_dir={root / f'out-sce{i}'}",
                ]
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(args.repeats):
            for name, run in contenders.items():
                times[name].append(run(i))
                for leftover in root.glob(f"*{i}"):  # outputs and copies: keep the disk use down
                    if leftover.is_dir() and leftover.name != "in":
                        shutil.rmtree(leftover)
    print(
        f"inputs: a base and 3 fine-tuned models, {size / 1e9:.2f} GB each in float32 ({total / 1e9:.2f} GB read per merge)"
    )
    print("| what | seconds (median) | range | GB/s |")
    print("|---|---|---|---|")
    rate = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rate[name] = total / 1e9 / med
        print(f"| {name} | {med:.1f} | {min(ts):.1f}-{max(ts):.1f} | {rate[name]:.2f} |")
    print(f"ratio {rate['fusechat3 merge, ties'] / rate['mergekit-yaml, ties']:.2f}")


if __name__ == "__main__":
    main()
