"""The `fusechat3` command: parse, load the recipe, call one stage function.

Heavy libraries (torch, vLLM, TRL) are imported by the stages themselves, so
`fusechat3 --help` and a recipe error answer at once.

`fusechat3 sft|dpo|wrpo <yaml>` take either a run recipe (it has `sources:`: the run's
stage) or a training config (top-level `model:` and an `sft:`/`dpo:`/`wrpo:` section: the
same as `python -m fusechat3.training.<x> --config <yaml>`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

STAGE_HELP = {
    "prompts": "build the prompt set from the recipe's data builders",
    "sample": "sample N responses per prompt from each source (vLLM by default)",
    "score": "score every response: reward model + math/code verification",
    "build": "build the SFT and DPO sets by the FuseChat-3.0 rules",
    "sft": "SFT of the target on the SFT set (TRL); or train from a training config (model: + sft:)",
    "dpo": "DPO of the SFT model on the DPO set (TRL; e.g. length-normalized); or from a config (model: + dpo:)",
    "controls": "single-source control runs (same SFT budget, one source's data)",
    "eval": "held-out accuracy of every model of the run -> scoreboard.json",
}
# Commands that also take a training config: the same as `python -m fusechat3.training.<command> --config`.
TRAINING_COMMANDS = ("sft", "dpo", "wrpo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusechat3",
        description="Knowledge fusion of LLMs: FuseChat-3.0 implicit fusion on vLLM + TRL, with a CPU toy world.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_recipe(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        what = "recipe YAML, e.g. recipes/toyworld/imf.yaml"
        if name in TRAINING_COMMANDS:
            example = (
                "recipes/wrpo/llama-3.1-8b.yaml" if name == "wrpo" else f"recipes/fusechat3/llama-3.1-8b/{name}.yaml"
            )
            what += f", or a training config, e.g. {example}"
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
    from_to = ["prompts", "sample", "score", "build", "sft", "dpo", "controls", "eval"]
    r.add_argument("--from", dest="start", choices=from_to, help="first stage to run")
    r.add_argument("--to", dest="stop", choices=from_to, help="last stage to run")
    for name, help in STAGE_HELP.items():
        sp = with_recipe(name, help)
        if name == "sample":
            sp.add_argument("--source", help="sample only this source")
            sp.add_argument(
                "--shard", metavar="I/N", help="do only shards k with k %% N == I (split one source over N jobs)"
            )
        if name == "eval":
            sp.add_argument("--models", nargs="+", help="evaluate only these models (e.g. target_before qwen2-code)")

    with_recipe("wrpo", "WRPO of the SFT model on the WRPO triplets (TRL), from a training config (model: + wrpo:)")
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

    tw = sub.add_parser("toyworld", help="the toy world: build its models")
    tws = tw.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    b = tws.add_parser("build", help="train the toy world's models from a seed (minutes on 2 CPU cores)")
    b.add_argument("--out", help="output folder (default: the package's assets, which are committed)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only", nargs="+", help="build only these models (e.g. target reward)")
    b.add_argument("--jobs", type=int, default=2, help="models trained at once, one thread each (default 2)")
    return p


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


def _train_from_config(command: str, path: str, overrides: list[str]) -> int:
    """Run `python -m fusechat3.training.<command> --config <path> --set ...` in this process; its exit code."""
    import importlib

    argv = ["--config", path] + [arg for item in overrides for arg in ("--set", item)]
    return importlib.import_module(f"fusechat3.training.{command}").main(argv)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in TRAINING_COMMANDS:
        from fusechat3.pipeline import STAGES
        from fusechat3.training.common import is_training_config

        if is_training_config(args.recipe, args.command):
            return _train_from_config(args.command, args.recipe, args.overrides)
        if args.command not in STAGES:  # no stage of a run by that name: a training config is the only way
            raise ValueError(
                f"{args.recipe}: `fusechat3 {args.command}` takes a training config (top-level model: and "
                f"{args.command}:, e.g. recipes/wrpo/llama-3.1-8b.yaml), not a run recipe"
            )
    if args.command == "toyworld":
        from pathlib import Path

        from fusechat3.toyworld.build import build

        build(Path(args.out) if args.out else None, seed=args.seed, only=args.only, jobs=args.jobs)
        return 0

    from fusechat3.recipe import load_recipe
    from fusechat3.run import Run

    run = Run(load_recipe(args.recipe, args.overrides))
    if args.command == "run":
        from fusechat3.pipeline import run_all

        run_all(run, args.start, args.stop)
    elif args.command == "sample":
        from fusechat3.sampling.stage import run_sample

        if args.source:
            run.recipe.source(args.source)  # one clear line if there is no such source
        run_sample(run, args.source, _shard(args.shard))
    elif args.command == "report":
        from fusechat3.report import write_report

        write_report(run, args.out)
    elif args.command == "push":
        from fusechat3.export import export_local, push

        if args.repo_id is None:
            if args.private or args.revision:
                raise ValueError("--private and --revision go with --repo-id, not --local-dir")
            export_local(run, args.local_dir or None, license=args.license)
        else:
            push(run, args.repo_id, private=args.private, license=args.license, revision=args.revision)
    elif args.command == "eval":
        from fusechat3.evaluation.stage import run_eval

        run_eval(run, only=args.models)
    else:
        from fusechat3.pipeline import stage_fn

        stage_fn(args.command)(run)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = _dispatch(args)
    except (ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        # A user mistake (recipe, data, missing stage): one line, no traceback.
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"fusechat3: error: {msg}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
