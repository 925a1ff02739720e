"""What every stage shares: the run (recipe + run directory), the stage keys, and the
summary table printed at the end of a stage.

A stage's key is a hash of its own settings and of the keys of the stages it reads, all
computed from the recipe alone. So a changed setting changes the key of that stage and of
every stage after it (their old outputs are moved aside by the store), and an unchanged
stage is a no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from fusechat3.recipe import Recipe, as_dict, recipe_hash
from fusechat3.store import RunDir, Stage


@dataclass
class Run:
    recipe: Recipe
    started: float = field(default_factory=time.time)

    @cached_property
    def dir(self) -> RunDir:
        return RunDir(self.recipe.run_path)

    def stage(self, name: str) -> Stage:
        return self.dir.stage(name, self.key(name))

    def read(self, name: str) -> list[dict]:
        stage_cmd = name.split("/")[0]
        return self.dir.read_stage(name, how=f"fusechat3 {stage_cmd} {self.recipe.path or '<recipe>'}")

    # ------------------------------------------------------------------ keys

    def key(self, name: str) -> str:
        r = self.recipe
        top, _, sub = name.partition("/")
        if top == "prompts":
            benchmark = r.decontamination.prompts if r.decontamination else []
            files = [_local_files(spec.args) for spec in [*r.prompts, *benchmark]]
            return recipe_hash(
                {
                    "prompts": as_dict(r.prompts),
                    "decontamination": as_dict(r.decontamination),
                    "seed": r.seed,
                    "files": files,
                }
            )
        if top == "sample":
            from fusechat3.sampling.base import sampling_key

            src = r.source(sub)
            return recipe_hash(
                {
                    "prompts": self.key("prompts"),
                    "sampling_key": sampling_key(r, src),
                    "domains": src.domains,
                    "shard_size": r.sampler.shard_size,
                }
            )
        if top == "score":
            samples = [self.key(f"sample/{s.name}") for s in r.sources]
            return recipe_hash({"samples": samples, "scoring": as_dict(r.scoring)})
        if top == "build":
            return recipe_hash({"score": self.key("score"), "building": as_dict(r.building)})
        if top == "sft":
            return recipe_hash({"build": self.key("build"), "target": as_dict(r.target), "sft": r.sft, "seed": r.seed})
        if top == "dpo":
            return recipe_hash({"sft": self.key("sft"), "dpo": r.dpo})
        if top == "controls":
            return recipe_hash({"sft": self.key("sft"), "source": sub})
        if top == "eval":
            return recipe_hash(
                {
                    "eval": as_dict(r.eval),
                    "model": self.model_key(sub),
                    "sampler": self._eval_sampler(sub),
                    "code": as_dict(r.scoring.code),
                }
            )
        raise KeyError(f"unknown stage {name!r}")

    def _eval_sampler(self, name: str) -> dict:
        """How model `name` is run for evaluation: a source as it is sampled, the rest with `sampler`."""
        r = self.recipe
        src = next((s for s in r.sources if s.name == name), None)
        if src is None:
            return {"backend": r.sampler.backend, "engine": r.sampler.engine}
        backend, engine = r.sampler_for(src)
        return {"backend": backend, "engine": engine, "chat_template": r.chat_template(src)}

    # ------------------------------------------------------------------ models

    def model_key(self, name: str) -> str:
        """What identifies an evaluated model: the key of the stage that made it, or its reference."""
        if name == "target_before":
            return self.recipe.target.model
        if name == "target_sft":
            return self.key("sft")
        if name == "target_dpo":
            return self.key("dpo")
        if name.startswith("target_single_"):
            return self.key(f"controls/{name.removeprefix('target_single_')}")
        return self.recipe.source(name).model


def _local_files(args: dict) -> list:
    """(path, size, mtime) of the local files a builder's arguments name: an edited prompts
    file changes the prompts stage's key, so it is rebuilt instead of silently reused."""
    out = []
    for value in args.values():
        if not isinstance(value, str) or not value or "\n" in value:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            continue  # a Hub id or a name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return out


def print_summary(title: str, rows: list[tuple[str, object]], seconds: float | None = None) -> None:
    """The short table every stage ends with (rows in, rows out, skips by reason)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title + (f"  ({seconds:.0f}s)" if seconds is not None else ""), title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, count in rows:
        table.add_row(what, str(count))
    Console().print(table)


def log(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]fusechat3[/] {msg}", highlight=False)
