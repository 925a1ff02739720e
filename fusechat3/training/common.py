"""What SFT, DPO and WRPO training share: TRL config validation, CPU defaults, data loading,
LoRA, resuming, the choice of the final checkpoint, the final save, the entry point.

The training functions take TRL config fields verbatim (`SFTConfig` / `DPOConfig`); this
module checks them before anything heavy is loaded, fills in what a machine without CUDA
needs, reads the training parquet files (or a `datasets` dataset) keeping only TRL's
columns, turns malformed rows into counted skips, and parses the YAML config of the
`python -m fusechat3.training.{sft,dpo,wrpo}` entry points.

A training config has two optional top-level keys besides the TRL section, handled here
once for every trainer (`training_options` checks them, `train_and_save` applies them):

- `peft:` peft.LoraConfig fields (r, lora_alpha, target_modules, ...) -> LoRA through the
  TRL trainer's `peft_config`. The final save merges the adapter into the base model
  (a plain checkpoint that vLLM loads; the adapter is kept in `<output_dir>/adapter`);
  `merge: false` saves only the adapter in `<output_dir>`.
- `select_checkpoint: {metric: eval_loss, last: 2}` -> the paper's checkpoint choice: after
  training, the last `last` checkpoints are evaluated on the held-out data and the better
  one becomes the final model (`<output_dir>/checkpoint_choice.json` records which).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import json
import logging
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusechat3.recipe import RecipeError, apply_overrides, parse_yaml, resolve_model
from fusechat3.schema import RowError

logger = logging.getLogger(__name__)

# A chat message as the training sets store it; explicit so that Arrow never has to guess
# the type of a column whose first rows are skipped (empty lists).
MESSAGE_FEATURE = {"role": "string", "content": "string"}


# --------------------------------------------------------------------------- TRL config


def _closest(key: str, valid: Sequence[str], fallback: str = "see the TRL docs for the valid fields") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else fallback


def check_trl_args(args: dict, config_cls: type, where: str) -> None:
    """Raise a RecipeError naming the first key of `args` that is not a field of `config_cls`."""
    if not isinstance(args, dict):
        raise RecipeError(f"{where}: must be a mapping of {config_cls.__name__} fields, got {type(args).__name__}")
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    for key in args:
        if key == "output_dir":
            raise RecipeError(f"{where}.output_dir: set the output directory once, outside the {where} section")
        if key not in names:
            raise RecipeError(f"{where}.{key}: not a {config_cls.__name__} field; {_closest(str(key), names)}")


def device_defaults(args: dict, has_cuda: bool) -> dict:
    """`args` with what a machine without CUDA needs: CPU, fp32, a non-fused optimizer, no trackers.

    TRL defaults to bf16 and transformers to the fused AdamW; neither is what a CPU run
    wants (bf16 autocast is slow and less reproducible there). What the user set
    explicitly and cannot work is overridden with a warning; their other choices stay.
    """
    if has_cuda:
        return dict(args)
    out = dict(args)
    out["use_cpu"] = True
    for key in ("bf16", "fp16", "tf32"):
        if out.get(key):
            logger.warning("no CUDA device: %s=true is turned off, training runs on the CPU in float32", key)
            out[key] = False
    out["bf16"] = out["fp16"] = False  # explicit: TRL turns bf16 on when it is left unset
    optim = str(out.get("optim", ""))
    if "fused" in optim:
        logger.warning("no CUDA device: optim=%s is replaced by adamw_torch", optim)
    if not optim or "fused" in optim:
        out["optim"] = "adamw_torch"
    out.setdefault("report_to", "none")
    out.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; it only warns on CPU
    return out


def build_trl_config(config_cls: type, args: dict, output_dir: str, where: str) -> Any:
    """The TRL config from `args` (already key-checked) and the machine's defaults, as one clear error if bad."""
    import torch

    full = device_defaults(args, torch.cuda.is_available())
    try:
        config = config_cls(output_dir=str(output_dir), **full)
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split())
        raise RecipeError(f"{where}: {config_cls.__name__} rejects these settings: {message}") from None
    check_resume(config.resume_from_checkpoint, str(output_dir), where)
    return config


# --------------------------------------------------------------------------- checkpoints

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' folder name for the checkpoint of a step


def checkpoints(output_dir: str) -> list[tuple[int, Path]]:
    """The `checkpoint-<step>` folders of `output_dir` as (step, path), oldest first ([] if there are none)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def check_resume(value: Any, output_dir: str, where: str) -> None:
    """Check `resume_from_checkpoint` (true = the last checkpoint of output_dir, or a folder) before any loading.

    transformers raises only when training starts, after the model and data are loaded.
    """
    if value is None or value is False:
        return
    key = f"{where}.resume_from_checkpoint"
    if value is True:
        if not checkpoints(output_dir):
            raise RecipeError(
                f"{key}: true, but {output_dir} has no checkpoint-<step> folder to resume from; "
                "train with save_strategy: steps first, or remove the key"
            )
    elif isinstance(value, str):
        if not Path(value).is_dir():
            raise RecipeError(
                f"{key}: {value!r} is not a folder; give a checkpoint-<step> folder, or true for the last"
            )
    else:
        raise RecipeError(f"{key}: must be true or the path of a checkpoint-<step> folder, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SelectCheckpoint:
    """The paper's checkpoint choice: evaluate the `last` checkpoints, keep the best by `metric`.

    `metric` is a key of `Trainer.evaluate()`'s result (`eval_loss`; for DPO also
    `eval_rewards/accuracies`, the share of held-out pairs whose chosen reward is higher).
    A metric whose name ends in `loss` is better lower, any other higher, as in transformers.
    """

    metric: str = "eval_loss"
    last: int = 2
    greater_is_better: bool = False


_SELECT_KEYS = ("metric", "last", "greater_is_better")


def parse_select_checkpoint(raw: Any) -> SelectCheckpoint | None:
    """The `select_checkpoint:` mapping as a SelectCheckpoint (None when absent); a RecipeError naming a bad key."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RecipeError("select_checkpoint: must be a mapping, e.g. {metric: eval_loss, last: 2}")
    for key in raw:
        if key not in _SELECT_KEYS:
            hint = _closest(str(key), _SELECT_KEYS, f"valid keys: {', '.join(_SELECT_KEYS)}")
            raise RecipeError(f"select_checkpoint.{key}: unknown key; {hint}")
    metric = raw.get("metric", SelectCheckpoint.metric)
    if not isinstance(metric, str) or not metric:
        raise RecipeError("select_checkpoint.metric: must be a metric name, e.g. eval_loss or eval_rewards/accuracies")
    metric = metric if metric.startswith("eval_") else f"eval_{metric}"  # evaluate() prefixes its metrics
    last = raw.get("last", SelectCheckpoint.last)
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise RecipeError(f"select_checkpoint.last: must be a whole number >= 1 (the paper: 2), got {last!r}")
    greater = raw.get("greater_is_better", not metric.endswith("loss"))
    if not isinstance(greater, bool):
        raise RecipeError(f"select_checkpoint.greater_is_better: must be true or false, got {greater!r}")
    return SelectCheckpoint(metric=metric, last=last, greater_is_better=greater)


def check_select(
    select: SelectCheckpoint, config: Any, has_eval: bool, where: str, metrics: Sequence[str] | None = None
) -> None:
    """Raise a RecipeError if the TRL config cannot give `select` its candidates (before any model is loaded)."""
    if not has_eval:
        raise RecipeError(
            "select_checkpoint: needs held-out data to compare the checkpoints; set eval_files (or eval_split with "
            "dataset), or remove select_checkpoint"
        )
    strategy = getattr(config.save_strategy, "value", config.save_strategy)  # transformers' str enum
    if strategy not in ("steps", "epoch"):
        raise RecipeError(
            f"select_checkpoint: needs checkpoints to choose from: {where}.save_strategy: steps with "
            f"{where}.save_steps (the paper: 100), or epoch; got save_strategy: {strategy}"
        )
    if config.save_total_limit is not None and config.save_total_limit < select.last:
        raise RecipeError(
            f"select_checkpoint.last is {select.last} but {where}.save_total_limit is {config.save_total_limit}: "
            f"the candidates would be deleted; set save_total_limit to {select.last} or more"
        )
    if config.load_best_model_at_end:
        raise RecipeError(
            f"select_checkpoint and {where}.load_best_model_at_end both choose the final model; keep one of them"
        )
    if metrics is not None and select.metric not in metrics:
        raise RecipeError(
            f"select_checkpoint.metric: {select.metric!r} is not a metric of this trainer; use one of {list(metrics)}"
        )


def load_checkpoint_weights(trainer: Any, path: Path) -> None:
    """Load the weights (or the LoRA adapter) of checkpoint `path` into the trainer's model, in place."""
    # Trainer._load_best_model is private, but it is the one transformers routine that loads a
    # checkpoint into an already trained model under every backend (plain, DeepSpeed ZeRO-3,
    # FSDP, PEFT adapters); `load_best_model_at_end` uses it the same way.
    trainer.state.best_model_checkpoint = str(path)
    trainer._load_best_model()


def choose_checkpoint(trainer: Any, select: SelectCheckpoint) -> dict:
    """Evaluate the last `select.last` checkpoints, load the best into the model, record the choice.

    The paper saves every 100 steps and keeps the better of the last two. Checkpoints of a
    later step than the trainer reached (left by an earlier run in the same folder) are not
    candidates. Returns the record written to `<output_dir>/checkpoint_choice.json`; on a tie
    the later checkpoint wins. NaN is the worst value.
    """
    output_dir = Path(trainer.args.output_dir)
    found = checkpoints(str(output_dir))
    step = trainer.state.global_step
    stale = [p.name for s, p in found if step and s > step]
    if stale:
        logger.warning("select_checkpoint: %s are from an earlier run (after step %d), not candidates", stale, step)
    candidates = [(s, p) for s, p in found if not (step and s > step)][-select.last :]
    record: dict = {"metric": select.metric, "greater_is_better": select.greater_is_better, "candidates": []}
    if not candidates:
        logger.warning("select_checkpoint: no checkpoint in %s; the final model is the last state", output_dir)
        record["chosen"] = None
        _write_choice(trainer, output_dir, record)
        return record

    worst = -math.inf if select.greater_is_better else math.inf
    for cand_step, path in candidates:
        load_checkpoint_weights(trainer, path)
        metrics = trainer.evaluate()
        if select.metric not in metrics:
            raise RecipeError(
                f"select_checkpoint.metric: {select.metric!r} is not among the evaluation's metrics "
                f"{sorted(metrics)}; the checkpoints stay in {output_dir}"
            )
        value = float(metrics[select.metric])
        record["candidates"].append(
            {"checkpoint": path.name, "step": cand_step, "value": value if math.isfinite(value) else None}
        )
    sign = 1 if select.greater_is_better else -1
    scores = [sign * (c["value"] if c["value"] is not None else worst) for c in record["candidates"]]
    best = max(range(len(scores)), key=lambda i: (scores[i], i))  # ties: the later checkpoint
    if best != len(candidates) - 1:  # the model holds the last candidate evaluated
        load_checkpoint_weights(trainer, candidates[best][1])
    chosen = record["candidates"][best]
    record["chosen"] = chosen["checkpoint"]
    trainer.state.best_model_checkpoint = str(candidates[best][1])
    trainer.state.best_metric = chosen["value"]
    _write_choice(trainer, output_dir, record)
    if trainer.is_world_process_zero():
        others = ", ".join(f"{c['checkpoint']} {c['value']}" for c in record["candidates"] if c is not chosen)
        print(f"checkpoint choice: {chosen['checkpoint']} ({select.metric} {chosen['value']}) over {others or '-'}")
    return record


def _write_choice(trainer: Any, output_dir: Path, record: dict) -> None:
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / "checkpoint_choice.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(output_dir / "checkpoint_choice.json")


# --------------------------------------------------------------------------- LoRA

_PEFT_MERGE_KEY = "merge"  # ours, not LoraConfig's: merge the adapter into the base model on save


def check_peft(raw: Any) -> None:
    """Raise a RecipeError naming the first key of `peft:` that is neither a peft.LoraConfig field nor `merge`."""
    from peft import LoraConfig

    if not isinstance(raw, dict):
        raise RecipeError("peft: must be a mapping of peft.LoraConfig fields (r, lora_alpha, target_modules, ...)")
    names = [f.name for f in dataclasses.fields(LoraConfig) if f.init]
    for key in raw:
        if key == _PEFT_MERGE_KEY:
            if not isinstance(raw[key], bool):
                raise RecipeError(f"peft.merge: must be true (merged model) or false (adapter only), got {raw[key]!r}")
        elif key not in names:
            hint = _closest(str(key), [*names, _PEFT_MERGE_KEY], "see the peft.LoraConfig docs for the valid fields")
            raise RecipeError(f"peft.{key}: not a LoraConfig field; {hint}")


def lora_config(raw: dict) -> Any:
    """The peft.LoraConfig of a checked `peft:` mapping (`task_type` defaults to CAUSAL_LM)."""
    from peft import LoraConfig

    check_peft(raw)
    fields = {k: v for k, v in raw.items() if k != _PEFT_MERGE_KEY}
    fields.setdefault("task_type", "CAUSAL_LM")
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"peft: peft.LoraConfig rejects these settings: {' '.join(str(e).split())}") from None


@dataclasses.dataclass
class TrainingOptions:
    """The options of a training config outside its TRL section, checked: LoRA and the checkpoint choice."""

    peft_config: Any = None  # a peft.LoraConfig for the TRL trainer's `peft_config`, or None (full fine-tuning)
    merge_adapter: bool = True
    select: SelectCheckpoint | None = None


def training_options(
    config: Any,
    *,
    peft: dict | None = None,
    select_checkpoint: dict | None = None,
    has_eval: bool = False,
    where: str = "sft",
    metrics: Sequence[str] | None = None,
) -> TrainingOptions:
    """Check the `peft:` and `select_checkpoint:` mappings against the built TRL `config` (cheap: no model loaded).

    `metrics`: the evaluation metrics the trainer reports, to reject a misspelt
    `select_checkpoint.metric` now rather than after training (None: not checked).
    """
    select = parse_select_checkpoint(select_checkpoint)
    if select is not None:
        check_select(select, config, has_eval, where, metrics)
    if peft is None:
        return TrainingOptions(select=select)
    return TrainingOptions(
        peft_config=lora_config(peft), merge_adapter=bool(peft.get(_PEFT_MERGE_KEY, True)), select=select
    )


def is_peft_model(model: Any) -> bool:
    """Whether the trainer's model carries a peft adapter."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merge_adapter(adapter_dir: str, output_dir: str, config: Any) -> None:
    """Load the base model with the saved adapter, merge, and save a plain checkpoint in `output_dir`.

    Merging from the saved adapter (rather than the in-memory model) works the same under
    ZeRO-3 and FSDP, whose in-memory weights are sharded. The base is loaded as TRL loaded
    it for training (`model_init_kwargs`, float32 by default), so a LoRA run saves the same
    dtype as a full fine-tuning run.
    """
    import torch
    from peft import AutoPeftModelForCausalLM

    kwargs = dict(config.model_init_kwargs) if isinstance(config.model_init_kwargs, dict) else {}
    dtype = kwargs.get("dtype", "float32")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = AutoPeftModelForCausalLM.from_pretrained(
        adapter_dir, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    model.merge_and_unload().save_pretrained(output_dir)


# --------------------------------------------------------------------------- data


def expand_files(patterns: Sequence[str], where: str) -> list[str]:
    """Parquet files from paths and globs, in a stable order; a RecipeError for one that matches nothing."""
    if isinstance(patterns, str | Path):
        patterns = [str(patterns)]
    if not patterns:
        raise RecipeError(f"{where}: no files given; list the parquet files to train on")
    files: list[str] = []
    for pattern in patterns:
        matches = [m for m in sorted(glob.glob(str(pattern))) if Path(m).is_file()]
        if not matches:
            raise RecipeError(f"{where}: {pattern!r} matches no file; check the path (relative to {Path.cwd()})")
        files.extend(m for m in matches if m not in files)
    return files


def check_columns(files: Sequence[str], columns: Sequence[str], kind: str) -> None:
    """Raise a RowError naming the first file that lacks one of `columns` (reads parquet footers only)."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise RowError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise RowError(f"{path}: missing column(s) {missing}; a {kind} row needs {list(columns)}")


def checked_files(patterns: Sequence[str], columns: Sequence[str], where: str, kind: str) -> list[str]:
    """The parquet files behind `patterns`, each checked to have `columns` (cheap: footers only)."""
    paths = expand_files(patterns, where)
    check_columns(paths, columns, kind)
    return paths


def load_parquet(paths: Sequence[str], columns: Sequence[str]) -> Any:
    """A `datasets.Dataset` of only `columns` from checked parquet files (analysis columns are not read)."""
    import datasets

    # Reading only TRL's columns also avoids schema clashes between shards in the analysis
    # columns (e.g. score_rejected all-null in one file, float in another).
    return datasets.load_dataset("parquet", data_files=list(paths), split="train", columns=list(columns))


def load_named_dataset(name: str, split: str, columns: Sequence[str], kind: str) -> Any:
    """A Hub dataset id or a local dataset folder through `datasets.load_dataset`, keeping only `columns`."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise RecipeError(
            f"dataset {name!r} (split {split!r}): cannot be loaded ({' '.join(str(e).split())})"
        ) from None
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise RowError(
            f"dataset {name!r} (split {split!r}): missing column(s) {missing}; a {kind} row needs {list(columns)}"
        )
    return ds.select_columns(list(columns))


def message_problem(messages: Any, name: str) -> str:
    """Why a list of chat messages cannot be trained on ('' if it can)."""
    if not isinstance(messages, list) or not messages:
        return f"empty {name}"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"malformed message in {name} (needs string role and content)"
    return ""


def clean_messages(messages: list[dict]) -> list[dict]:
    """Only role and content: TRL's conversational format, and one Arrow type for every row."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def convert_rows(dataset: Any, convert: Callable[[dict], dict], columns: Sequence[str], stage: str) -> Any:
    """Map each row with `convert` (which returns TRL's columns and a `skip` reason, '' to keep) and drop skips.

    Returns the kept rows, with only `columns`; prints how many rows were skipped and why.
    """
    import datasets

    features = datasets.Features(
        {c: [{k: datasets.Value(v) for k, v in MESSAGE_FEATURE.items()}] for c in columns}
        | {"skip": datasets.Value("string")}
    )
    mapped = dataset.map(convert, remove_columns=dataset.column_names, features=features, desc=f"Checking {stage} rows")
    reasons = Counter(r for r in mapped["skip"] if r)
    kept = mapped.filter(lambda r: not r, input_columns="skip") if reasons else mapped
    print_summary(stage, len(dataset), len(kept), reasons)
    if len(kept) == 0:
        raise RowError(f"{stage}: none of the {len(dataset)} rows can be trained on ({dict(reasons)})")
    return kept.remove_columns("skip")


def print_summary(stage: str, rows_in: int, rows_out: int, skipped: Counter) -> None:
    """The stage's rows in, rows out and skips by reason, once (on the main process)."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    lines = [f"{stage}: {rows_in} rows in, {rows_out} rows out, {rows_in - rows_out} skipped"]
    lines += [f"  {n:>8}  {reason}" for reason, n in skipped.most_common()]
    print("\n".join(lines), flush=True)


def report_trl_drops(stage: str, rows_in: int, trainer: Any, packing: bool = False) -> None:
    """Count the rows TRL's own preparation dropped (a prompt that fills max_length leaves nothing to learn)."""
    if packing:
        return  # packing regroups rows into blocks: the counts no longer match
    rows_out = len(trainer.train_dataset)
    if rows_out < rows_in:
        reason = "prompt fills max_length (nothing left to train on): raise max_length"
        print_summary(f"{stage} (TRL)", rows_in, rows_out, Counter({reason: rows_in - rows_out}))


def load_tokenizer(model: str, config: Any) -> Any:
    """The model's tokenizer; a RecipeError if it has no chat template and none is configured."""
    from transformers import AutoTokenizer

    kwargs = config.model_init_kwargs if isinstance(config.model_init_kwargs, dict) else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model, revision=kwargs.get("revision"), trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise RecipeError(f"model {model!r}: cannot load its tokenizer ({reason}); check the path or Hub id") from None
    if not tokenizer.chat_template and not getattr(config, "chat_template_path", None):
        raise RecipeError(
            f"model {model!r}: its tokenizer has no chat template; set chat_template_path to a tokenizer "
            "or a .jinja file that has one"
        )
    return tokenizer


def save_final(trainer: Any, output_dir: str, merge: bool = True) -> str:
    """Save the trained model and its tokenizer (with the chat template) where vLLM can load them.

    A LoRA model is saved merged into its base (the adapter also in `<output_dir>/adapter`),
    or, with `merge=False`, as the adapter alone in `output_dir`.
    """
    if is_peft_model(trainer.model) and merge:
        adapter_dir = str(Path(output_dir) / "adapter")
        trainer.save_model(adapter_dir)  # the adapter (gathered from the shards) + the tokenizer
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            merge_adapter(adapter_dir, output_dir, trainer.args)
            trainer.processing_class.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)  # gathers ZeRO-3 / FSDP shards; writes the processing class too
    trainer.save_state()  # trainer_state.json: the loss curve, for reports
    trainer.accelerator.wait_for_everyone()
    return str(output_dir)


def train_and_save(trainer: Any, options: TrainingOptions | None = None) -> str:
    """Train (resuming if the config says so), choose the checkpoint, save the final model; returns output_dir."""
    options = options or TrainingOptions()
    config = trainer.args
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if options.select is not None:
        choose_checkpoint(trainer, options.select)
    return save_final(trainer, config.output_dir, merge=options.merge_adapter)


# --------------------------------------------------------------------------- entry point

_COMMON_KEYS = (
    "model",
    "train_files",
    "dataset",
    "split",
    "eval_files",
    "eval_split",
    "output_dir",
    "peft",
    "select_checkpoint",
)


@dataclasses.dataclass
class RunConfig:
    """A training config file: where the model and data are, where the result goes, the TRL fields."""

    model: str
    output_dir: str
    args: dict
    train_files: list[str] | None = None
    dataset: str | None = None
    split: str = "train"
    eval_files: list[str] | None = None
    eval_split: str | None = None
    ref_model: str | None = None
    peft: dict | None = None  # peft.LoraConfig fields (+ merge), checked
    select_checkpoint: dict | None = None  # {metric, last, greater_is_better}, checked

    @property
    def has_eval(self) -> bool:
        """Whether the config names held-out data (eval_files, or eval_split of its dataset)."""
        return bool(self.eval_files) or (self.dataset is not None and self.eval_split is not None)


def load_run_config(
    path: str, section: str, config_cls: type, overrides: Sequence[str] = (), extra_keys: Sequence[str] = ()
) -> RunConfig:
    """Read a training YAML (`model`, `train_files` or `dataset`, `output_dir`, `<section>:` TRL fields).

    The `<section>` keys are checked against the TRL config class `config_cls` here, and the
    `peft:` and `select_checkpoint:` mappings against theirs, so that the error names the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the config ({e.strerror or e})") from None
    try:
        raw = parse_yaml(text)
        if not isinstance(raw, dict):
            raise RecipeError(f"must be a mapping with model:, train_files: (or dataset:), output_dir: and {section}:")
        raw = apply_overrides(raw, overrides)
        run = _run_config(raw, section, extra_keys)
        check_trl_args(run.args, config_cls, section)
        if run.peft is not None:
            check_peft(run.peft)
        return run
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


def _run_config(raw: dict, section: str, extra_keys: Sequence[str]) -> RunConfig:
    valid = [*_COMMON_KEYS, *extra_keys, section]
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            raise RecipeError(f"unknown key '{key}'; {hint}")
    for key in ("model", "output_dir"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise RecipeError(f"key '{key}' is required and must be a string")
    for key in ("dataset", "split", "eval_split", "ref_model"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise RecipeError(f"key '{key}' must be a string")
    if (raw.get("train_files") is None) == (raw.get("dataset") is None):
        raise RecipeError("set exactly one of 'train_files' (parquet files/globs) or 'dataset' (Hub id or folder)")
    for key in ("train_files", "eval_files"):
        value = raw.get(key)
        if isinstance(value, str):
            raw[key] = [value]
        elif value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RecipeError(f"key '{key}' must be a list of parquet paths or globs")
    args = raw.get(section) or {}
    if not isinstance(args, dict):
        raise RecipeError(f"key '{section}' must be a mapping of TRL config fields")
    parse_select_checkpoint(raw.get("select_checkpoint"))  # the structure; check_select needs the TRL config
    if raw.get("peft") is not None and not isinstance(raw["peft"], dict):
        raise RecipeError("key 'peft' must be a mapping of peft.LoraConfig fields (r, lora_alpha, target_modules, ...)")
    return RunConfig(
        model=resolve_model(raw["model"]),
        output_dir=raw["output_dir"],
        args=args,
        train_files=raw.get("train_files"),
        dataset=raw.get("dataset"),
        split=str(raw.get("split") or "train"),
        eval_files=raw.get("eval_files"),
        eval_split=raw.get("eval_split"),
        ref_model=resolve_model(raw["ref_model"]) if raw.get("ref_model") else None,
        peft=raw.get("peft"),
        select_checkpoint=raw.get("select_checkpoint"),
    )


def is_training_config(path: str, section: str) -> bool:
    """Whether the YAML at `path` is a training config of `section` (top-level `model:` and `<section>:`, no
    `sources:`) rather than a run recipe. False when it cannot be read: the recipe loader then names the problem."""
    try:
        raw = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecipeError):
        return False
    return isinstance(raw, dict) and "model" in raw and section in raw and "sources" not in raw


def parse_cli(argv: Sequence[str] | None, prog: str, description: str) -> argparse.Namespace:
    """The entry points' arguments: `--config FILE` and repeatable `--set key.path=value`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", required=True, help="training YAML (model, train_files or dataset, output_dir, ...)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, dotted for TRL fields (e.g. --set sft.learning_rate=1e-5); repeatable",
    )
    return parser.parse_args(argv)


def run_cli(run: Callable[[], str]) -> int:
    """Run a training entry point; a user mistake is one line on stderr and exit code 2."""
    try:
        out = run()
    except (RecipeError, RowError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved to {out}")
    return 0


# --------------------------------------------------------------------------- one entry point for every method


@dataclasses.dataclass(frozen=True)
class Method:
    """What differs between the SFT, DPO and WRPO entry points; `train_from_files` and `main_for` do the rest."""

    section: str  # the YAML section of TRL fields, and the module name: sft, dpo, wrpo
    label: str  # for messages: SFT, DPO, WRPO
    columns: Sequence[str]  # the dataset columns the trainer reads
    config_cls: Callable[[], type]  # the TRL config class (a function: TRL is imported only when needed)
    make_config: Callable[[dict, str], Any]  # (fields, output_dir) -> checked TRL config
    options: Callable[[Any, dict | None, dict | None, bool], TrainingOptions]  # (config, peft, select, has_eval)
    run: Callable[..., str]  # (model, train, config, *, eval_dataset, peft, select_checkpoint[, ref_model]) -> dir
    description: str
    ref_model: bool = False  # takes a reference model (`ref_model` key)


def train_from_files(
    method: Method,
    model: str,
    train_files: list[str],
    output_dir: str,
    args: dict,
    *,
    eval_files: list[str] | None = None,
    **extras: Any,
) -> str:
    """Train `model` with `method` on parquet files; cheap checks first, so a typo costs no model or data loading."""
    model = resolve_model(model)
    if extras.get("ref_model"):
        extras["ref_model"] = resolve_model(extras["ref_model"])
    config = method.make_config(args, output_dir)
    method.options(config, extras.get("peft"), extras.get("select_checkpoint"), bool(eval_files))
    train_paths = checked_files(train_files, method.columns, "train_files", method.label)
    eval_paths = checked_files(eval_files, method.columns, "eval_files", method.label) if eval_files else None
    with config.main_process_first(desc=f"loading {method.label} data"):
        train = load_parquet(train_paths, method.columns)
        evals = load_parquet(eval_paths, method.columns) if eval_paths else None
    return method.run(model, train, config, eval_dataset=evals, **extras)


def main_for(method: Method, argv: Sequence[str] | None) -> int:
    """`python -m fusechat3.training.<section> --config FILE [--set key=value ...]` for `method`."""
    ns = parse_cli(argv, f"python -m fusechat3.training.{method.section}", method.description)

    def run() -> str:
        rc = load_run_config(
            ns.config, method.section, method.config_cls(), ns.overrides, extra_keys=("ref_model",) * method.ref_model
        )
        extras: dict[str, Any] = {"peft": rc.peft, "select_checkpoint": rc.select_checkpoint}
        if method.ref_model:
            extras["ref_model"] = rc.ref_model
        if rc.train_files is not None:
            return train_from_files(
                method, rc.model, rc.train_files, rc.output_dir, rc.args, eval_files=rc.eval_files, **extras
            )
        config = method.make_config(rc.args, rc.output_dir)
        method.options(config, rc.peft, rc.select_checkpoint, rc.has_eval)  # before any data is loaded
        with config.main_process_first(desc=f"loading {method.label} data"):
            train = load_named_dataset(rc.dataset, rc.split, method.columns, method.label)
            evals = (
                load_named_dataset(rc.dataset, rc.eval_split, method.columns, method.label) if rc.eval_split else None
            )
        return method.run(rc.model, train, config, eval_dataset=evals, **extras)

    return run_cli(run)
