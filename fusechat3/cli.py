"""The `fusechat3` command: parse, load the recipe, call one stage function.

Heavy libraries (torch, vLLM, TRL) are imported by the stages themselves, so
`fusechat3 --help` and a recipe error answer at once.

`fusechat3 sft|dpo|wrpo <yaml>` take either a run recipe (it has `sources:`: the run's
stage) or a training config (top-level `model:` and an `sft:`/`dpo:`/`wrpo:` section: the
same as `python -m fusechat3.training.<x> --config <yaml>`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from fusechat3 import stages
from fusechat3.errors import UserError
from fusechat3.logs import setup as setup_logging
from fusechat3.logs import stage_log


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusechat3",
        description="Knowledge fusion of LLMs: FuseChat-3.0 implicit fusion on vLLM + TRL, with a CPU toy world.",
        epilog="The stages of `run`, in order: " + ", ".join(stages.names()),
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_recipe(name: str, help: str, config_example: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        what = "recipe YAML, e.g. recipes/toyworld/imf.yaml"
        if config_example:
            what += f", or a config file, e.g. {config_example}"
        sp.add_argument("recipe", help=what)
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe key, e.g. --set sources.0.sampling.n=8 (repeatable)",
        )
        return sp

    r = with_recipe("run", "run every stage in order (resumable: finished stages are skipped)")
    r.add_argument("--from", dest="start", choices=stages.names(), help="first stage to run")
    r.add_argument("--to", dest="stop", choices=stages.names(), help="last stage to run")
    for stage in stages.stages().values():
        sp = with_recipe(stage.name, stage.help, stage.config_example or None)
        if stage.arguments is not None:
            known = {a.dest for a in sp._actions}
            stage.arguments(sp)
            sp.set_defaults(stage_options=[a.dest for a in sp._actions if a.dest not in known])

    rp = with_recipe("report", "plots and an HTML page of what the build made and why")
    rp.add_argument("--out", metavar="DIR", help="output folder (default: runs/<name>/report)")
    pu = with_recipe("push", "publish the training sets with a dataset card: to the Hub, or a local folder")
    where = pu.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub dataset to push to (needs a token)")
    where.add_argument(
        "--local-dir", nargs="?", const="", metavar="DIR", help="write the Hub layout here (no DIR: runs/<name>/hub)"
    )
    pu.add_argument("--private", action="store_true", help="create the Hub dataset private")
    pu.add_argument("--license", default="other", help="the card's license id, e.g. apache-2.0 (default: other)")
    pu.add_argument("--revision", help="the Hub branch to push to (default: main)")

    le = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness tasks on a model folder, a Hub id, or every model of a run (-> its results table)",
    )
    le.add_argument("target", help="a run recipe (e.g. recipes/toyworld/imf.yaml), a model folder or a Hub id")
    le.add_argument("--tasks", nargs="+", required=True, help="harness task names (e.g. gsm8k ifeval)")
    le.add_argument("--include-path", metavar="DIR", help="a folder of your own task YAMLs")
    le.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="the harness's model backend")
    le.add_argument("--models", nargs="+", help="with a recipe: only these models of the run")
    le.add_argument("--limit", type=float, help="at most this many examples per task (a fraction if < 1)")
    le.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    le.add_argument("--batch-size", default="8", help="the harness's batch size, or 'auto'")
    le.add_argument("--no-chat-template", dest="chat_template", action="store_false", help="raw prompts")
    le.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe key")

    tw = sub.add_parser("toyworld", help="the toy world: build its models")
    tws = tw.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    b = tws.add_parser("build", help="train the toy world's models from a seed (minutes on 2 CPU cores)")
    b.add_argument("--out", help="output folder (default: the package's assets, which are committed)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only", nargs="+", help="build only these models (e.g. target reward)")
    b.add_argument("--jobs", type=int, default=2, help="models trained at once, one thread each (default 2)")
    j = tws.add_parser("judge", help="the reward model's pairwise accuracy on held-out (right, near-miss) pairs")
    j.add_argument("--model", default="toyworld:reward", help="the reward model (default: toyworld:reward)")
    return p


def _train_from_config(module: str, path: str, overrides: list[str]) -> int:
    """Run `python -m <module> --config <path> --set ...` in this process; its exit code."""
    argv = ["--config", path] + [arg for item in overrides for arg in ("--set", item)]
    return importlib.import_module(module).main(argv)


def _toyworld(args: argparse.Namespace) -> int:
    if args.toy_command == "judge":
        from fusechat3.recipe import resolve_model
        from fusechat3.toyworld.judge import pairwise_accuracy

        acc = pairwise_accuracy(resolve_model(args.model))
        kinds = ", ".join(f"{k} {v:.1%}" for k, v in acc["per_kind"].items())
        print(
            f"{args.model}: pairwise accuracy {acc['accuracy']:.1%} on {acc['pairs']} held-out (right, near-miss) "
            f"pairs of {acc['prompts']} evaluation prompts ({kinds})"
        )
        return 0
    from pathlib import Path

    from fusechat3.toyworld.build import build

    build(Path(args.out) if args.out else None, seed=args.seed, only=args.only, jobs=args.jobs)
    return 0


def _lm_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fusechat3.evaluation import lm_eval_bridge as bridge

    limit = None if args.limit is None else (args.limit if args.limit < 1 else int(args.limit))
    batch = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    options = dict(
        backend=args.backend,
        include_path=args.include_path,
        limit=limit,
        num_fewshot=args.num_fewshot,
        batch_size=batch,
        chat_template=args.chat_template,
    )
    if Path(args.target).suffix in (".yaml", ".yml"):
        from fusechat3.recipe import load_recipe
        from fusechat3.run import Run

        run = Run(load_recipe(args.target, args.overrides))
        found = bridge.run_lm_eval(run, args.models, args.tasks, **options)
        print(json.dumps(found, indent=1))
        print(f"results table: {run.output('eval', 'table')}")
        return 0
    if args.models or args.overrides:
        raise UserError("--models and --set go with a run recipe, not a model folder")
    from fusechat3.recipe import resolve_model

    print(json.dumps(bridge.evaluate(resolve_model(args.target), args.tasks, **options), indent=1))
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "lm-eval":
        return _lm_eval(args)
    stage = stages.stages().get(args.command)
    if stage is not None and stage.config_entry is not None:
        from fusechat3.training.config import is_config_file

        # A training stage's section is its name with '_' for '-' (`fuse-train` -> `fuse_train:`).
        if is_config_file(
            args.recipe, stage.is_config or (lambda raw: "model" in raw and stage.name.replace("-", "_") in raw)
        ):
            return _train_from_config(stage.config_entry, args.recipe, args.overrides)
    if args.command == "toyworld":
        return _toyworld(args)

    from fusechat3.recipe import load_recipe
    from fusechat3.run import Run

    run = Run(load_recipe(args.recipe, args.overrides))
    if args.command in ("report", "push") and run.recipe.scoring is None:
        raise UserError(
            f"{args.recipe}: `fusechat3 {args.command}` works on the implicit path's built sets, and this recipe has "
            "none (no scoring: section); its results are in the run's eval/scoreboard.json"
        )
    if stage is not None:
        with stage_log(run.dir.root / stage.name):
            stage.run(run, **{name: getattr(args, name) for name in getattr(args, "stage_options", [])})
    elif args.command == "run":
        stages.run_all(run, args.start, args.stop)
    elif args.command == "report":
        from fusechat3.report import write_report

        write_report(run, args.out)
    elif args.command == "push":
        from fusechat3.export import export_local, push

        if args.repo_id is None:
            if args.private or args.revision:
                raise UserError("--private and --revision go with --repo-id, not --local-dir")
            export_local(run, args.local_dir or None, license=args.license)
        else:
            push(run, args.repo_id, private=args.private, license=args.license, revision=args.revision)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = _dispatch(args)
    except UserError as err:
        if args.verbose:
            raise
        # A user mistake (recipe, data, missing stage): one line, no traceback. Any other exception is a
        # bug, here or in a library, and keeps its traceback.
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"fusechat3: error: {msg}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
