"""Stage `allocate`: task t's expert modules from its zero-cost scores, cumulative over the sequence."""

from __future__ import annotations

from dataclasses import asdict, replace

from dmole.artifacts import Version, Writer
from dmole.artifacts.io import read_json, read_parquet, write_json

from .dmole.allocation import ScoredModule
from .dmole.allocation import allocate as allocate_modules
from .errors import UserError
from .methods import get_method
from .options import AllocateOptions, hashed, parse_budget
from .project import Project
from .registry import ALLOCATE, ZC_SCORE
from .resolve import stage_options
from .runner import StageResult, run_stage


def load_scores(version: Version) -> list[ScoredModule]:
    table = read_parquet(version.file(ZC_SCORE.files.scores)).to_pylist()
    return [ScoredModule(r["module"], r["tower"], r["score"], r["d_in"], r["d_out"]) for r in table]


def allocate(
    project: Project, task_name: str, options: AllocateOptions | dict | None = None, *, force: bool = False
) -> StageResult:
    """Allocate ``task_name``'s experts; ``options`` (what the caller sets) go over the workspace's defaults."""
    options = stage_options(project.config, ALLOCATE.name, options)
    method = get_method(options.method or project.config.method)
    if not method.allocates:
        raise UserError(f"{method.name} allocates no experts: allocate is for dmole and its ablations")
    options = options.model_copy(update={"method": method.name})
    task_id = project.config.task_index(task_name)
    scores = project.store.require(ZC_SCORE.name, task_name, hint=f"dmole zc-score --task {task_name}")
    # allocating out of order is an error: the task before must be allocated
    previous = method.allocation(project, project.config.task_names[task_id - 2]) if task_id > 1 else None
    fraction, parameters = parse_budget(options.budget)
    rule = method.allocation_rule

    def compute(writer: Writer) -> None:
        cumulative = read_json(previous.file(ALLOCATE.files.arch))["cumulative"] if previous else None
        scored = [replace(m, overhead=m.d_out if options.expert_type == "dora" else 0) for m in load_scores(scores)]
        result = allocate_modules(
            scored,
            fraction=fraction,
            parameters=parameters,
            rank=options.rank,
            previous=cumulative,
            task_id=task_id,
            rule=rule,
        )
        if cumulative is not None and set(cumulative) != set(result.cumulative):
            raise UserError(
                f"the candidate modules of '{task_name}' differ from the earlier tasks' (was the model changed?)"
            )
        record = {
            "task": task_name,
            "task_id": task_id,
            "rho": fraction,
            "rank": options.rank,
            "rule": rule,
            "expert_type": options.expert_type,
            **asdict(result),
        }
        write_json(writer.path(ALLOCATE.files.arch), record)
        writer.meta.update(
            n_vision=result.n_vision,
            n_language=result.n_language,
            pi_vision=result.pi_vision,
            expert_parameters=result.expert_parameters,
            rule=rule,
            expert_type=options.expert_type,
        )

    inputs = [scores] + ([previous] if previous else [])
    return run_stage(
        project,
        method.stage(ALLOCATE.name),
        task_name,
        config={"options": hashed(options)},
        inputs=inputs,
        compute=compute,
        force=force,
    )


def allocation_table(project: Project) -> dict:
    """Per tower, layer -> task -> module kinds holding that task's expert (the architecture's evolution)."""
    tasks = [t for t in project.config.task_names if project.store.latest(ALLOCATE.name, t)]
    if not tasks:
        raise UserError("no allocation yet: run `dmole allocate --task <first task>`")
    last = read_json(project.store.latest(ALLOCATE.name, tasks[-1]).file(ALLOCATE.files.arch))["cumulative"]
    scores = read_parquet(project.store.require(ZC_SCORE.name, tasks[-1]).file(ZC_SCORE.files.scores)).to_pylist()
    kinds = {r["module"]: (r["tower"], r["layer"], r["kind"]) for r in scores}
    towers: dict[str, dict[int, dict[str, list[str]]]] = {}
    for module, task_ids in last.items():
        tower, layer, kind = kinds[module]
        cell = towers.setdefault(tower, {}).setdefault(layer, {name: [] for name in tasks})
        for task_id in task_ids:
            cell[project.config.task_names[task_id - 1]].append(kind)
    return {
        "tasks": tasks,
        "towers": {
            t: {layer: cells for layer, cells in sorted(rows.items())}
            for t, rows in sorted(towers.items(), key=lambda kv: kv[0] != "vision")
        },
    }
