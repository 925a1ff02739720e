"""Publish a run's training sets: the Hugging Face Hub layout with a dataset card, locally or on the Hub.

`fusechat3 push <recipe> --local-dir [DIR]` writes (default DIR: `runs/<name>/hub`):

    README.md                              the dataset card (YAML front matter + markdown)
    sft/train-00000-of-00001.parquet       one config per training set, sharded at ~500 MB
    dpo/train-00000-of-00001.parquet
    wrpo/train-00000-of-00001.parquet      where the build wrote build/wrpo.parquet
    plots/*.png                            the report's plots, linked from the card

so that `datasets.load_dataset(DIR, "dpo")` works. `fusechat3 push <recipe> --repo-id ORG/NAME`
sends each config with `DatasetDict.push_to_hub(config_name=...)`, then the plots and, last,
the card (it replaces the card `push_to_hub` writes and declares the same configs). A Hub
that cannot be reached, or a missing token, is one `HubError` line.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import yaml

from fusechat3 import report
from fusechat3.errors import UserError
from fusechat3.recipe import TOYWORLD_PREFIX
from fusechat3.run import Run, log, print_summary

MAX_SHARD_BYTES = 500 * 2**20  # the Hub's usual parquet shard size
# What an export folder holds: a folder with anything else in it is not replaced.
_EXPORT_ENTRIES = {"README.md", "plots", ".gitattributes", *report.SETS}
# The Hub's size buckets for `size_categories`: (upper bound, label).
_SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]
_SET_FORMATS = {
    "sft": "TRL conversational language modelling: `messages` (the prompt's messages, then the picked response)",
    "dpo": "TRL conversational preference: `prompt`, `chosen`, `rejected` (message lists)",
    "wrpo": "TRL conversational preference plus `source_chosen`: a source's best response beside the target's own "
    "best (`chosen`) and worst (`rejected`)",
}


class HubError(UserError):
    """The Hub could not be reached or refused the upload: one line with the fix."""


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket of a dataset of `n` rows."""
    return next((label for bound, label in _SIZE_CATEGORIES if n < bound), "n>1B")


# --------------------------------------------------------------------------- local export


def export_local(
    run: Run,
    out_dir: str | Path | None = None,
    *,
    license: str = "other",
    repo_id: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the Hub layout of the run's training sets, plots and dataset card into `out_dir`.

    Default `out_dir`: `runs/<name>/hub`. A previous export there is replaced whole (its old
    shards would otherwise still match `train-*`); a folder holding anything else is refused.
    `repo_id` only fills the card's loading snippet. Returns `out_dir`.
    """
    import pyarrow.parquet as pq

    out_dir = Path(out_dir) if out_dir is not None else run.dir.root / "hub"
    _check_replaceable(out_dir)
    data = report.load(run)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        written: dict[str, tuple[int, int]] = {}  # config -> (rows, shards)
        skipped = []
        for name, path in report.set_files(run).items():
            table = pq.read_table(path)
            if table.num_rows == 0:
                skipped.append(name)  # no rows, no columns: not a loadable config
                continue
            written[name] = (table.num_rows, _write_shards(table, tmp / name, max_shard_bytes))
        plots = report.render_plots(data, tmp / "plots")
        card = dataset_card(data, written, skipped, plots, license=license, repo_id=repo_id)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows = [(f"{name}: rows ({shards} shard{'s' * (shards > 1)})", n) for name, (n, shards) in written.items()]
    rows += [(f"{name}: not exported", "no rows") for name in skipped]
    print_summary(f"export -> {out_dir}", rows)
    return out_dir


def _write_shards(table, folder: Path, max_shard_bytes: int) -> int:
    """`train-0000i-of-0000n.parquet` files of at most about `max_shard_bytes` (in-memory size) each."""
    import pyarrow.parquet as pq

    n = min(max(1, math.ceil(table.nbytes / max_shard_bytes)), table.num_rows)
    per = math.ceil(table.num_rows / n)
    folder.mkdir(parents=True)
    for i in range(n):
        pq.write_table(table.slice(i * per, per), folder / f"train-{i:05d}-of-{n:05d}.parquet")
    return n


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"--local-dir {out_dir} is a file: give a folder")
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in _EXPORT_ENTRIES)
    if other:
        raise UserError(
            f"--local-dir {out_dir} holds files that are not a fusechat3 export ({', '.join(other[:3])}): "
            "give an empty or new folder"
        )


def _replace(new: Path, out_dir: Path) -> None:
    """Move the finished export into place; the previous one goes only once the new one is there."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{new.name}")
        out_dir.rename(old)
    new.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the card


def _md_table(header: list[str], rows: list[list]) -> str:
    def cell(c: object) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    rows = rows or [["none", *([""] * (len(header) - 1))]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def card_metadata(written: dict[str, tuple[int, int]], name: str, license: str) -> dict:
    """The card's YAML front matter: license, task, size, tags and one `configs` entry per set."""
    configs = [
        {"config_name": c, "data_files": [{"split": "train", "path": f"{c}/train-*"}]}
        | ({"default": True} if i == 0 else {})
        for i, c in enumerate(written)
    ]
    return {
        "license": license,
        "pretty_name": name,
        "task_categories": ["text-generation"],
        "tags": ["fusechat", "knowledge-fusion", "synthetic", "trl", *written],
        "size_categories": [size_category(sum(n for n, _ in written.values()))],
        "configs": configs,
    }


def dataset_card(
    data: report.RunData,
    written: dict[str, tuple[int, int]],
    skipped: list[str],
    plots: dict[str, tuple[Path, list[str]]],
    *,
    license: str = "other",
    repo_id: str | None = None,
) -> str:
    """The README.md of the export: front matter, then what the data is, how it was made, and how to use it."""
    r = data.run.recipe
    name = f"{r.name}: FuseChat-3.0 implicit-fusion data"
    meta = yaml.safe_dump(card_metadata(written, name, license), sort_keys=False, allow_unicode=True)
    where = repo_id or "path/to/this/folder"
    # A toyworld reference means nothing outside fusechat3: the snippet then names a placeholder.
    target = r.target.model if not r.target.model.startswith(TOYWORLD_PREFIX) else "path/to/the/target"
    sources = ", ".join(f"`{s.name}` ({s.model})" for s in r.fusion_sources)
    parts = [
        f"---\n{meta}---\n",
        f"# {name}\n",
        f"Training data for the target `{r.target.model}`, made by fusechat3 from the recipe "
        f"`{r.path or r.name}` with the FuseChat-3.0 implicit-fusion rules: every prompt was answered several times "
        f"by each source LLM ({sources}), every response was scored by a reward model and, for math and code, "
        "checked for correctness; the SFT set keeps the best response of a prompt, the DPO set a best-vs-worst "
        "pair from one source.\n",
        "| config | rows | format |\n|---|---:|---|\n"
        + "\n".join(f"| `{c}` | {n} | {_SET_FORMATS.get(c, '')} |" for c, (n, _) in written.items())
        + "\n",
        "Every row also keeps `prompt_id`, `domain`, `model` (the source of the chosen response), "
        "`score_chosen` and `score_rejected` (reward-model scores) for analysis.\n",
    ]
    if skipped:
        parts.append(f"Not exported (the build made no rows): {', '.join(skipped)}.\n")
    parts += [
        "## Composition\n",
        "Prompts and training rows per domain and source dataset (rows joined to prompts by `prompt_id`).\n",
        _md_table(*report.composition(data)) + "\n",
        "## How the data was selected\n",
        _rules(data) + "\n",
        "### Sources and sampling\n",
        _md_table(*_sources_table(data)) + "\n",
        "### Judges\n",
        _judges(data) + "\n",
        "### What the build dropped\n",
        "Every prompt gives one row or one counted drop; responses that could not be used are counted by reason.\n",
        _md_table(*report.drop_table(data.build)) + "\n",
        "## Plots\n",
    ]
    for plot, (path, notes) in plots.items():
        caption = report.PLOTS[plot][1]
        note = f" Not shown: {'; '.join(notes)}." if notes else ""
        parts.append(f"![{plot}](plots/{path.name})\n\n{caption}{note}\n")
    parts += [
        "## Use\n",
        "```python\nfrom datasets import load_dataset\n\n"
        + "\n".join(f'{c} = load_dataset("{where}", "{c}", split="train")' for c in written)
        + "\n```\n",
        "Train with TRL (the two stages of FuseChat-3.0: SFT, then length-normalized DPO). The SFT rows become "
        "prompt-completion pairs so that the loss falls on the response only:\n",
        "```python\nfrom trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer\n\n"
        'sft = sft.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}, '
        'remove_columns=["messages"])\n'
        f'trainer = SFTTrainer(model="{target}", args=SFTConfig(output_dir="sft", num_train_epochs=3), '
        "train_dataset=sft)\n"
        "trainer.train()\ntrainer.save_model()\n"
        "# Length-normalized DPO, FuseChat-3.0's loss for its Llama targets\n"
        'trainer = DPOTrainer(model="sft", args=DPOConfig(output_dir="dpo", loss_type=["sigmoid_norm"], beta=10.0), '
        "train_dataset=dpo)\n"
        "trainer.train()\n```\n",
        "With fusechat3 itself: `fusechat3 sft <recipe>` and `fusechat3 dpo <recipe>`, or on a cluster "
        "`accelerate launch -m fusechat3.training.sft --config <recipe>` (then `fusechat3.training.dpo`).\n",
    ]
    return "\n".join(parts)


def _rules(data: report.RunData) -> str:
    b = data.run.recipe.building
    lines = [
        "- Prompts are split between SFT and DPO by a hash of their id (seed "
        f"{b.seed}); fraction to SFT: " + ", ".join(f"{d} {f:g}" for d, f in b.sft_fraction.items()) + ".",
        "- SFT: the response with the highest reward; in math and code the highest-reward *correct* one "
        "(code: passes the static check and every test). Prompts with no correct response are dropped.",
        "- DPO: from one source, the highest- vs the lowest-reward response (math and code: best correct vs worst "
        "incorrect), kept only if the reward gap lies in the band:",
    ]
    for d in data.domains:
        if d in b.sft_only_domains:
            continue
        band = b.gap_for(d)
        lines.append(f"  - {d}: " + (f"[{band[0]:g}, {band[1]:g}]" if band is not None else "no band"))
    own = data.run.recipe.target_samples
    if own is not None:
        lines.append(
            f"- WRPO (DPO-split prompts): `source_chosen` is the best source response (the SFT rule), `chosen` and "
            f"`rejected` the best and worst of the target's own samples (`{own.name}`, the DPO rule without a band)."
        )
    only = ", ".join(b.sft_only_domains) or "none"
    lines.append(f"- SFT-only domains: {only}, from the one source `{b.zh_source or '-'}`.")
    lines.append(
        "- Truncated, empty and unscored responses, ties and non-finite rewards are never used; each is counted below."
    )
    return "\n".join(lines)


def _sources_table(data: report.RunData) -> tuple[list[str], list[list]]:
    header = [
        "source",
        "role",
        "model",
        "domains",
        "n",
        "temperature",
        "top_p",
        "top_k",
        "repetition penalty",
        "max tokens",
    ]
    rows = []
    for s in data.run.recipe.sources:
        sp = s.sampling
        n = str(sp.n) + "".join(f", {d}: {k}" for d, k in sp.n_per_domain.items())
        rows.append(
            [
                s.name,
                s.role,
                s.model,
                ", ".join(s.domains) if s.domains else "all",
                n,
                f"{sp.temperature:g}",
                f"{sp.top_p:g}",
                sp.top_k if sp.top_k > 0 else "off",
                f"{sp.repetition_penalty:g}",
                sp.max_tokens,
            ]
        )
    return header, rows


def _judges(data: report.RunData) -> str:
    sc = data.run.recipe.scoring
    rm = sc.reward_model
    revision = f" (revision `{rm.revision}`)" if rm.revision else ""
    return "\n".join(
        [
            f"- Reward model: `{rm.model}`{revision}; responses longer than {rm.max_length} tokens get no "
            "reward (not truncated).",
            "- Math: the final answer (`\\boxed{}` first) is compared with the gold answer by "
            "[math-verify](https://github.com/huggingface/Math-Verify), symbolically and numerically.",
            f"- Code: the program is checked statically (syntax, undefined names with pyflakes), then run against "
            f"every test in a sandbox (own process group, resource limits, no network where the OS allows; "
            f"{sc.code.timeout_s:g} s and {sc.code.memory_mb} MiB per response).",
        ]
    )


# --------------------------------------------------------------------------- the Hub


def _is_hub_error(err: BaseException) -> bool:
    """Errors of the Hub client or of the network below it (the HTTP library varies by version)."""
    roots = {cls.__module__.split(".")[0] for cls in type(err).__mro__}
    return isinstance(err, OSError) or bool(roots & {"huggingface_hub", "httpx", "httpx2", "requests", "urllib3"})


def _check_hub_ready() -> None:
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            "HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push, or export with --local-dir"
        )
    if not get_token():
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")


def push(run: Run, repo_id: str, private: bool = False, license: str = "other", revision: str | None = None) -> str:
    """Upload every config, the plots and the dataset card to the Hub dataset `repo_id`; returns its URL."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    _check_hub_ready()
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="fusechat3-push-") as tmp:
        folder = export_local(run, Path(tmp) / "hub", license=license, repo_id=repo_id)
        configs = [c for c in report.SETS if (folder / c).is_dir()]
        step = "pushing"
        try:
            for c in configs:
                step = f"pushing config {c!r}"
                # In memory, as the build stage held it; from_parquet would add a cache copy and a progress bar.
                shards = sorted((folder / c).glob("train-*.parquet"))
                ds = datasets.Dataset(pa.concat_tables([pq.read_table(p) for p in shards]))
                datasets.DatasetDict({"train": ds}).push_to_hub(
                    repo_id, config_name=c, private=private, revision=revision, max_shard_size=MAX_SHARD_BYTES
                )
                log(f"push: {c} ({len(ds)} rows) -> {repo_id}")
            api = HfApi()
            step = "uploading the plots"
            api.upload_folder(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=str(folder / "plots"),
                path_in_repo="plots",
                revision=revision,
                commit_message="fusechat3: data report plots",
            )
            # The card goes last: it replaces the one push_to_hub wrote, with the same configs.
            step = "uploading the dataset card"
            api.upload_file(
                path_or_fileobj=str(folder / "README.md"),
                path_in_repo="README.md",
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                commit_message="fusechat3: dataset card",
            )
        except Exception as err:
            if not _is_hub_error(err):
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise HubError(
                f"{step} to {repo_id} failed ({type(err).__name__}: {first}): check the network, your token's "
                "write access (`hf auth whoami`) and the repo id"
            ) from None
    url = f"https://huggingface.co/datasets/{repo_id}"
    log(f"push: {url}")
    return url
