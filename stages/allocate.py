"""Stage `allocate`: task t's expert modules from its zero-cost scores, cumulative over the sequence."""

from __future__ import annotations

import re
from dataclasses import asdict

from pydantic import Field, field_validator

from artifacts import Version, Writer
from artifacts.io import read_json, read_parquet, write_json

from .config import Method, Strict
from .dmole.allocation import ScoredModule, allocate as allocate_modules
from .errors import UserError
from .naming import allocation_rule, is_dmole, method_flag, stage_name
from .project import Project
from .runner import StageResult, run_stage

STAGE = "allocate"
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


class AllocateOptions(Strict):
    budget: str = Field(default="0.5", description="fraction of candidate modules, or a parameter count (2M)")
    rank: int = Field(default=8, gt=0)
    method: Method | None = Field(default=None, description="dmole, or an ablation whose allocation rule differs "
                                                             "(dmole-vision-only, ...); default: the workspace's")

    @field_validator("budget")
    @classmethod
    def _parses(cls, budget: str) -> str:
        parse_budget(budget)
        return budget


def parse_budget(text: str) -> tuple[float | None, int | None]:
    """'0.5' -> a module fraction; '2M', '500k', '120000' -> a parameter count."""
    value = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)", value)
    if not match:
        raise ValueError(f"budget {text!r} is neither a fraction in (0, 1] nor a parameter count like 2M")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix or (number > 1 and number.is_integer()):
        return None, int(number * _SUFFIX[suffix])
    if not 0 < number <= 1:
        raise ValueError(f"budget {text!r} is out of range: a fraction must be in (0, 1]")
    return number, None


def load_scores(version: Version) -> list[ScoredModule]:
    table = read_parquet(version.file("scores.parquet")).to_pylist()
    return [ScoredModule(r["module"], r["tower"], r["score"], r["d_in"], r["d_out"]) for r in table]


def previous_allocation(project: Project, task_name: str, method: str = "dmole") -> Version | None:
    """The allocation of the task before ``task_name``; allocating out of order is an error."""
    index = project.config.task_index(task_name)
    if index == 1:
        return None
    before = project.config.task_names[index - 2]
    return project.store.require(stage_name(STAGE, method), before,
                                 hint=f"dmole allocate --task {before}{method_flag(method)}")


def allocate(project: Project, task_name: str, options: AllocateOptions = AllocateOptions(), *,
             force: bool = False) -> StageResult:
    method = options.method or project.config.method
    if not is_dmole(method):
        raise UserError(f"{method} allocates no experts: allocate is for dmole and its ablations")
    options = options.model_copy(update={"method": method})
    task_id = project.config.task_index(task_name)
    scores = project.store.require("zc-score", task_name, hint=f"dmole zc-score --task {task_name}")
    previous = previous_allocation(project, task_name, method)
    fraction, parameters = parse_budget(options.budget)
    rule = allocation_rule(method)

    def compute(writer: Writer) -> None:
        cumulative = read_json(previous.file("arch.json"))["cumulative"] if previous else None
        result = allocate_modules(load_scores(scores), fraction=fraction, parameters=parameters, rank=options.rank,
                                  previous=cumulative, task_id=task_id, rule=rule)
        if cumulative is not None and set(cumulative) != set(result.cumulative):
            raise UserError(f"the candidate modules of '{task_name}' differ from the earlier tasks' "
                            "(was the model changed?)")
        record = {"task": task_name, "task_id": task_id, "rho": fraction, "rank": options.rank, "rule": rule,
                  **asdict(result)}
        write_json(writer.path("arch.json"), record)
        writer.meta.update(n_vision=result.n_vision, n_language=result.n_language, pi_vision=result.pi_vision,
                           expert_parameters=result.expert_parameters, rule=rule)

    inputs = [scores] + ([previous] if previous else [])
    return run_stage(project, stage_name(STAGE, method), task_name, config={"options": options.model_dump()},
                     inputs=inputs, compute=compute, force=force)


def allocation_table(project: Project) -> dict:
    """Per tower, layer -> task -> module kinds holding that task's expert (the architecture's evolution)."""
    tasks = [t for t in project.config.task_names if project.store.latest(STAGE, t)]
    if not tasks:
        raise UserError("no allocation yet: run `dmole allocate --task <first task>`")
    last = read_json(project.store.latest(STAGE, tasks[-1]).file("arch.json"))["cumulative"]
    kinds = {r["module"]: (r["tower"], r["layer"], r["kind"])
             for r in read_parquet(project.store.require("zc-score", tasks[-1]).file("scores.parquet")).to_pylist()}
    towers: dict[str, dict[int, dict[str, list[str]]]] = {}
    for module, task_ids in last.items():
        tower, layer, kind = kinds[module]
        cell = towers.setdefault(tower, {}).setdefault(layer, {name: [] for name in tasks})
        for task_id in task_ids:
            cell[project.config.task_names[task_id - 1]].append(kind)
    return {"tasks": tasks, "towers": {t: {layer: cells for layer, cells in sorted(rows.items())}
                                       for t, rows in sorted(towers.items(), key=lambda kv: kv[0] != "vision")}}
