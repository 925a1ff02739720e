"""`fusechat3 lm-eval`: EleutherAI's lm-evaluation-harness on a model folder, a Hub id, or every model of a run, its
results in the run's results table.

The harness does the evaluation (its task registry, few-shot handling, metrics and its `hf` and `vllm` backends);
this module only runs `lm_eval.simple_evaluate` per model and reads one number per task: the task's first reported
metric (its primary one, e.g. `acc,none` or `exact_match,strict-match`), as a fraction. On a run, the numbers go to
`eval/lm_eval.json` ({model: {"lm_eval:<task>": value}}) and into `eval/scoreboard.md` / `.png` beside the eval
stage's benchmarks. lm-eval is the optional extra `lmeval` (`pip install fusechat3[lmeval]`; the dev install has it).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fusechat3.errors import UserError
from fusechat3.run import log

PREFIX = "lm_eval:"


def primary_metric(task_results: dict[str, Any]) -> float | None:
    """The first metric the harness reports for a task, or None: a `<metric>,<filter>` key (`acc,none`), not its
    stderr; other keys (`alias`, `name`, `sample_len`) are not metrics."""
    for key, value in task_results.items():
        if "," not in key or "_stderr" in key or not isinstance(value, int | float):
            continue
        return float(value)
    return None


@cache
def _task_manager(include_path: str | None) -> Any:
    """The harness's task registry (indexing its YAMLs takes seconds): built once per include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def evaluate(
    model: str,
    tasks: list[str],
    *,
    backend: str = "hf",
    include_path: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    chat_template: bool = True,
    model_args: dict[str, Any] | None = None,
) -> dict[str, float]:
    """{task: value} of `lm_eval.simple_evaluate` on one model (a folder or a Hub id)."""
    try:
        import lm_eval
    except ImportError:
        raise UserError("fusechat3 lm-eval needs lm-evaluation-harness: pip install 'fusechat3[lmeval]'") from None
    manager = _task_manager(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hint = f" (with the tasks of {include_path})" if include_path else "; local task YAMLs: --include-path DIR"
        raise UserError(f"lm-eval: no task {unknown[0]!r} in the harness's registry{hint}")
    args: dict[str, Any] = {"pretrained": model, **(model_args or {})}
    device = None
    if backend == "hf":
        import torch

        args.setdefault("dtype", "auto")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the harness's hf backend assumes CUDA
    results = lm_eval.simple_evaluate(
        model=backend,
        model_args=args,
        tasks=tasks,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        task_manager=manager,
        apply_chat_template=chat_template,
        log_samples=False,
    )
    out = {}
    for task in tasks:
        value = primary_metric(results["results"].get(task, {}))
        if value is not None:
            out[task] = value
    return out


def run_lm_eval(run, models: list[str] | None, tasks: list[str], **options: Any) -> dict[str, dict[str, float]]:
    """Evaluate the run's models (all, or `models`) and merge the numbers into eval/lm_eval.json and the table."""
    from fusechat3.evaluation.stage import not_made_yet
    from fusechat3.evaluation.table import write_table

    paths = run.models()
    names = models or list(paths)
    missing = [m for m in names if m not in paths]
    if missing:
        raise UserError(f"lm-eval: {missing[0]!r} is not a model of the run; choose from {list(paths)}")
    out_path = run.output("eval", "lm_eval")
    found: dict[str, dict[str, float]] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for name in names:
        path = paths[name]
        if not_made_yet(name, path):
            log(f"lm-eval: {name} skipped: no model at {path} (run its stage first)")
            continue
        log(f"lm-eval: {name} on {', '.join(tasks)}")
        scores = evaluate(path, tasks, **options)
        found.setdefault(name, {}).update({PREFIX + t: v for t, v in scores.items()})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(found, indent=1))
    write_table(run)
    return found
