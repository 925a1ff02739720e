"""What every stage shares: the run (recipe + run directory), the stage keys and output paths
derived from the stages' declarations (`stages.StageDef`), and the summary table printed at the
end of a stage.

A stage's key is a hash of its own settings and of the keys of the stages it reads, all
computed from the recipe alone. So a changed setting changes the key of that stage and of
every stage after it (their old outputs are moved aside by the store), and an unchanged
stage is a no-op.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from fusechat3 import stages
from fusechat3.errors import StoreError
from fusechat3.logs import EVENTS
from fusechat3.recipe import Recipe, recipe_hash, resolve_model
from fusechat3.store import RunDir, Stage


@dataclass
class Run:
    recipe: Recipe
    started: float = field(default_factory=time.time)
    # Stage keys computed so far: a key reads the keys of every stage before it (and the prompts stage's key
    # stats its local files), and a run asks for the same keys many times (each part, each evaluated model).
    _keys: dict[str, str] = field(default_factory=dict, repr=False)

    @cached_property
    def dir(self) -> RunDir:
        return RunDir(self.recipe.run_path)

    def stage(self, name: str) -> Stage:
        """The store's folder of stage (or part) `name`, opened under its current key."""
        return self.dir.stage(name, self.key(name))

    def how(self, name: str) -> str:
        """The command that makes stage `name`, for messages."""
        return f"fusechat3 {name.split('/')[0]} {self.recipe.path or '<recipe>'}"

    def read(self, name: str) -> list[dict]:
        """Every row of the finished stage (or part) `name`."""
        return self.dir.read_stage(name, how=self.how(name))

    def parts(self, name: str) -> list[str]:
        """The part names of stage `name` (`sample/<source>`, ...): [name] for a stage without parts."""
        stage = stages.get(name)
        if stage.parts is None:
            return [name]
        return [f"{name}/{part}" for part in stage.parts(self.recipe)]

    # ------------------------------------------------------------------ keys

    def key(self, name: str) -> str:
        """The key of stage (or part) `name`: its settings and the keys of the stages it reads."""
        if name not in self._keys:
            stage = stages.get(name)
            part = name.partition("/")[2] or None
            reads = {read: [self.key(p) for p in self.parts(read)] for read in stage.reads}
            self._keys[name] = recipe_hash({"reads": reads, "settings": stage.settings(self, part)})
        return self._keys[name]

    # ------------------------------------------------------------------ outputs

    def output(self, name: str, output: str, part: str | None = None, **fields: str) -> Path:
        """Where stage `name` (its part `part`) writes its output `output`."""
        stage = stages.get(name)
        if output not in stage.outputs:
            raise KeyError(f"stage {name!r} declares no output {output!r} (it has {sorted(stage.outputs)})")
        folder = self.dir.root / name / part if part else self.dir.root / name
        return folder / stage.outputs[output].format(**fields)

    def existing(self, name: str, output: str, part: str | None = None, **fields: str) -> Path:
        """`output(...)`, which must exist: else one line saying which command makes it."""
        path = self.output(name, output, part, **fields)
        if not path.exists():
            raise StoreError(f"{path} is missing: run `{self.how(name)}` first")
        return path

    # ------------------------------------------------------------------ models

    def models(self) -> dict[str, str]:
        """Every model of the run (see `model_names`), by name -> a path or Hub id; a model a stage
        makes is its `model` output, whether made yet or not."""
        out = {"target_before": resolve_model(self.recipe.target.model)}
        for stage, model, part in _made_models(self.recipe):
            out[model] = str(self.output(stage.name, "model", part))
        for src in self.recipe.fusion_sources:
            out[src.name] = resolve_model(src.model)
        for name, ref in _extra_models(self.recipe).items():
            out[name] = resolve_model(ref)
        return out

    def model_key(self, name: str) -> str:
        """What identifies a model of the run: the key of the stage that made it, or its reference."""
        for stage, model, part in _made_models(self.recipe):
            if model == name:
                return self.key(f"{stage.name}/{part}" if part else stage.name)
        if name == "target_before":
            return self.recipe.target.model
        if name in _extra_models(self.recipe):
            return _extra_models(self.recipe)[name]
        return self.recipe.source(name).model


def _made_models(recipe: Recipe) -> list[tuple[stages.StageDef, str, str | None]]:
    """(stage, model name, part) of every model the recipe's enabled stages make."""
    return [
        (stage, model, part)
        for stage in stages.stages().values()
        if stage.models is not None and stage.enabled(recipe)
        for model, part in stage.models(recipe).items()
    ]


def _extra_models(recipe: Recipe) -> dict[str, str]:
    """`eval.models`: models evaluated beside the run's own (a folder trained outside the run, a released model)."""
    return dict(recipe.eval.models) if recipe.eval is not None else {}


def model_names(recipe: Recipe) -> list[str]:
    """The models of a run: the untrained target (`target_before`), the models its stages make
    (`target_sft`, `target_dpo`, ...), each source by its own name (not the target's own samples), and the extra
    models of `eval.models`."""
    made = [m for _, m, _ in _made_models(recipe)]
    return ["target_before", *made, *(s.name for s in recipe.fusion_sources), *_extra_models(recipe)]


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
    # And as one line in the stage's log file (`logs.stage_log`).
    when = f" ({seconds:.0f}s)" if seconds is not None else ""
    logging.getLogger(EVENTS).info(f"{title}{when}: " + ", ".join(f"{what} {count}" for what, count in rows))


def log(msg: str) -> None:
    """A stage message: on the console (rich), and in the stage's log file while one is open (`logs.stage_log`)."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]fusechat3[/] {msg}", highlight=False)
    logging.getLogger(EVENTS).info(msg)
