"""Peak memory of `fusechat3 merge` on models of about 1 GB each, against the number of shards they come in.

Random-weight Llama models in the real layout (`merge_inputs.py`: a base and three fine-tuned models of
1.07 GB each in float32) are written twice, in shards of about 400 MB and of about 100 MB; the same merge
(`sce_fusechat`, top-tau 0.1) runs on each as its own process, and that process's peak resident memory
(`ru_maxrss` from `os.wait4`) is printed, with the peak of a process that only imports the merge code.
mergekit reads one tensor of each input at a time from the shards and writes the output in shards of
`options.out_shard_size` (ours: 500M by default, which bounds the output it holds), so the peak should not
depend on the input shards: `ratio <peak at ~100 MB shards / peak at ~400 MB shards>` is printed last.

    python benchmarks/merge_memory.py                 # about 4 minutes and 9 GB of disk on 2 CPU cores
    python benchmarks/merge_memory.py --hidden 256    # a small, fast check of the script itself
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_inputs import llama_config, write_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peak_rss(argv: list[str]) -> tuple[float, float, float, float]:
    """(peak RSS, peak anonymous RSS, peak file-backed RSS in MiB, seconds) of a child process running argv.

    The total peak is the kernel's `ru_maxrss` (from `os.wait4`); the anonymous (heap: tensors in memory) and
    file-backed (pages of the memory-mapped safetensors files, which the kernel can drop at any time) parts
    are sampled from /proc/<pid>/status every 20 ms.
    """
    t0 = time.time()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    anon = file = 0
    status_path = Path(f"/proc/{proc.pid}/status")
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # the child's own rusage once it has ended
        if pid:
            proc.returncode = status
            break
        try:
            fields = dict(line.split(":", 1) for line in status_path.read_text().splitlines() if ":" in line)
            anon = max(anon, int(fields["RssAnon"].split()[0]))
            file = max(file, int(fields["RssFile"].split()[0]))
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.02)
    secs = time.time() - t0
    if status != 0:
        err.seek(0)
        raise SystemExit(f"merge_memory: {' '.join(argv)} failed:\n{err.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, anon / 1024, file / 1024, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size (1024: 1.07 GB per model)")
    ap.add_argument("--models", type=int, default=3, help="fine-tuned models merged onto the base")
    ap.add_argument("--shards", default="400,100", help="shard sizes to compare, in MB")
    ap.add_argument("--out-shard-size", default="100M", help="mergekit's out_shard_size (parameters per output shard)")
    ap.add_argument("--keep", help="write the inputs here and keep them (default: a temporary folder)")
    args = ap.parse_args()
    fusechat3 = str(Path(sys.executable).with_name("fusechat3"))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        base_rss, *_ = peak_rss([sys.executable, "-c", "import fusechat3.merging.merge, mergekit.merge, torch"])
        for mb in (int(x) for x in args.shards.split(",")):
            root = Path(tmp) / f"shards{mb}"
            base, models, size = write_inputs(root, args.models, mb * 10**6, llama_config(hidden=args.hidden))
            n_shards = len(list(base.glob("*.safetensors")))
            cfg = {
                "merge_method": "sce_fusechat",
                "base_model": str(base),
                "models": [{"model": str(m)} for m in models],
                "parameters": {"select_topk": 0.1},
                "output_dir": str(root / "out"),
                "options": {"out_shard_size": args.out_shard_size},
            }
            (root / "merge.yaml").write_text(yaml.safe_dump(cfg))
            rss, anon, file, secs = peak_rss([fusechat3, "merge", str(root / "merge.yaml")])
            rows.append((mb, n_shards, size, rss, anon, file, secs))
            import shutil

            shutil.rmtree(root)  # keep the disk use to one set of inputs
    print(f"inputs: a base and {args.models} fine-tuned models of {rows[0][2] / 1e9:.2f} GB each (float32)")
    print(f"peak RSS of a process that only imports the merge code: {base_rss:.0f} MiB")
    print(f"output shards of {args.out_shard_size} parameters")
    print("| shard size | shards per model | peak RSS (MiB) | of which anonymous | of which file pages | seconds |")
    print("|---|---|---|---|---|---|")
    for mb, n, _size, rss, anon, file, secs in rows:
        print(f"| {mb} MB | {n} | {rss:.0f} | {anon:.0f} | {file:.0f} | {secs:.1f} |")
    print(f"ratio {rows[-1][3] / rows[0][3]:.3f}")


if __name__ == "__main__":
    main()
