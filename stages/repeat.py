"""Stage `repeat`: one continual method's whole sequence under several seeds and task orders, every metric as mean
± standard deviation over the runs.

Every pair of a seed and a task order is one run: the method's sequence (`sequence.run_sequence`) in a scratch
workspace of its own, over the workspace's tasks in that order, with the seed in every stage that draws at random
(`sequence.point_config`). A run's metrics come from its own matrix, whose columns follow its order; each task's
final score is matched across runs by name (`metrics/spread.py`).

A run is known by the hash of everything it computes from (its workspace configuration, the tasks' data and the
model): ``<workspace>/.runs/repeat/<method>/<hash>/``. A finished run leaves ``run.json`` there (its matrix and what
it trained, in order) and its workspace is removed; the command run again, with more seeds or orders or after an
interruption, reads the finished runs and continues the unfinished ones where their stages stopped. ``--force``
runs every run again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from dmole.artifacts import config_hash
from dmole.artifacts.io import read_json, write_json

from .errors import UserError
from .methods import get_method
from .methods.base import ContinualMethod
from .metrics.spread import run_metrics, spread
from .options import RepeatOptions
from .progress import Progress, silent
from .project import Project
from .registry import REPEAT, TRAIN_TASK
from .resolve import stage_options
from .runner import StageResult, run_stage, source_fingerprint
from .sequence import point_config, point_project, run_sequence
from .train_task import method_hyper

DEFAULT, REVERSE = "default", "reverse"
RUN_FILE, RUN_WORKSPACE = "run.json", "workspace"


@dataclass(frozen=True)
class Run:
    seed: int
    order: str  # as given: default, reverse or the tasks
    tasks: tuple[str, ...]


def task_order(text: str, names: list[str]) -> tuple[str, ...]:
    """The tasks in the order ``text`` gives: ``default`` (the workspace's), ``reverse``, or every task of the
    workspace once, comma-separated."""
    if text.strip() == DEFAULT:
        return tuple(names)
    if text.strip() == REVERSE:
        return tuple(reversed(names))
    listed = [name.strip() for name in text.split(",") if name.strip()]
    problems = [
        f"unknown {', '.join(unknown)}" if (unknown := [n for n in listed if n not in names]) else "",
        f"missing {', '.join(missing)}" if (missing := [n for n in names if n not in listed]) else "",
        f"repeated {', '.join(sorted({n for n in listed if listed.count(n) > 1}))}"
        if len(set(listed)) < len(listed)
        else "",
    ]
    if any(problems):
        raise UserError(
            f"--order {text!r} is not {DEFAULT}, {REVERSE} or an order of every task once "
            f"({'; '.join(p for p in problems if p)}); the workspace's tasks are: {', '.join(names)}"
        )
    return tuple(listed)


def planned_runs(options: RepeatOptions, names: list[str]) -> list[Run]:
    """Every seed under every order, seed by seed; two orders that give the same sequence (default and the tasks
    spelt out in that order) are one run."""
    orders = {}
    for text in options.orders:
        orders.setdefault(task_order(text, names), text.strip())
    return [Run(seed, label, tasks) for seed in dict.fromkeys(options.seeds) for tasks, label in orders.items()]


def _trained(project: Project, method: ContinualMethod) -> list[dict]:
    """What the run's train-task versions record, in the order they were trained: each one's task, seed and the
    earlier tasks' train-task versions it was built on."""
    stage = method.stage(TRAIN_TASK.name)
    versions = [project.store.require(stage, after) for after in method.stages_after(project)]
    return [
        {
            "task": v.task,
            "seed": v.manifest["config"]["options"]["seed"],
            "built_on": [ref["task"] for ref in v.manifest["inputs"] if ref["stage"] == stage],
        }
        for v in versions
    ]


def _run(project: Project, folder: Path, method: ContinualMethod, hyper: dict, run: Run, progress: Progress) -> dict:
    tasks = [project.config.task(name) for name in run.tasks]
    point = point_project(project, folder, method, hyper, tasks=tasks, seed=run.seed)
    matrix = run_sequence(point, method, hyper, progress)
    return {
        "seed": run.seed,
        "order": run.order,
        "tasks": list(run.tasks),
        "matrix": matrix,
        "trained": _trained(point, method),
    }


def summarise(runs: list[dict]) -> dict:
    """Each run's metrics (over its tasks in its order) and final score per task; their mean ± std over runs."""
    for run in runs:
        run["metrics"] = run_metrics(run["matrix"])
        run["final"] = dict(zip(run["tasks"], run["matrix"][-1]))
    return {
        "std": "sample standard deviation over the runs (ddof = 1)",
        "metrics": spread([run["metrics"] for run in runs]),
        "final": spread([run["final"] for run in runs]),
    }


def repeat(
    project: Project, options: RepeatOptions | dict | None = None, *, force: bool = False, progress: Progress = silent
) -> StageResult:
    options = stage_options(project.config, REPEAT.name, options)
    method = get_method(options.method or project.config.method)
    if not method.trains:
        raise UserError(f"{method.name} trains nothing, so every seed and order gives the same scores")
    hyper = method_hyper(project, method, options).model_dump()
    names = project.config.task_names
    runs = planned_runs(options, names)
    sources = {n: source_fingerprint(project, project.config.task(n)) for n in names}
    keys = [
        config_hash(
            {
                "workspace": point_config(
                    project, method, hyper, tasks=[project.config.task(n) for n in run.tasks], seed=run.seed
                ).model_dump(exclude={"model", "data"}),
                "sources": sources,
            }
        )[:16]
        for run in runs
    ]
    config = {
        "method": method.name,
        "hyper": hyper,
        "runs": [{"seed": r.seed, "tasks": list(r.tasks), "key": key} for r, key in zip(runs, keys)],
    }
    scratch = project.root / ".runs" / REPEAT.name / method.name

    def compute(writer) -> None:
        results = []
        for run, key in zip(runs, keys):
            folder = scratch / key
            if force:
                shutil.rmtree(folder, ignore_errors=True)
            if not (folder / RUN_FILE).is_file():
                result = _run(project, folder / RUN_WORKSPACE, method, hyper, run, progress)
                write_json(folder / RUN_FILE, result)  # atomically: a run is finished once this exists
                shutil.rmtree(folder / RUN_WORKSPACE, ignore_errors=True)
            results.append({**read_json(folder / RUN_FILE), "order": run.order})
        summary = summarise(results)
        write_json(
            writer.path(REPEAT.files.result),
            {"method": method.name, "hyper": hyper, "tasks": names, "runs": results, **summary},
        )
        last = summary["metrics"]["last"]
        writer.meta.update(runs=len(results), last_mean=last["mean"], last_std=last["std"])

    return run_stage(project, REPEAT.name, method.name, config=config, inputs=[], compute=compute, force=force)
