"""Stage `sweep`: one continual method at each value of one of its hyperparameters, selected on validation data.

Papers report a regularised baseline at its best strength; choosing that strength on the test set would flatter
it, so each value is chosen on the tasks' validation sets (the registry's ``val`` files, held out from training
and test data). Every grid value runs the method's whole sequence in a scratch workspace of its own
(`<workspace>/.runs/sweep/...`, with the same model, data and stage settings; `sequence.py`): train-task and
eval after each task on the test sets, then the same experts evaluated on the validation sets after the last
task. The value with the best validation score (`relative_scores`: each task's score relative to the grid's best
on it, averaged, so that no metric's scale decides) is the selected one; the test matrices of every value are
reported beside it, so the whole curve is visible and the selection can be checked.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmole.artifacts import config_hash
from dmole.artifacts.io import write_json

from .data.tasks import load_eval_samples
from .errors import UserError
from .evaluate import evaluate
from .methods import get_method
from .methods.base import ContinualMethod
from .metrics.continual import continual_metrics
from .options import SweepOptions, parse_pairs
from .progress import Progress, silent
from .project import Project
from .registry import SWEEP
from .report import version_scores
from .resolve import stage_options
from .runner import StageResult, fingerprint, run_stage, source_fingerprint
from .sequence import point_project, run_sequence
from .train_task import method_hyper


@dataclass(frozen=True)
class Grid:
    parameter: str
    values: tuple[Any, ...]


def parse_grid(text: str | None, method: ContinualMethod) -> Grid:
    """``KEY=V1,V2,...`` (each value read as JSON where it parses, as ``--hparam`` reads it), or the method's own
    default grid."""
    if text is None:
        if method.sweep_grid is None:
            raise UserError(f"{method.name} declares no hyperparameter to sweep: give one with --grid KEY=V1,V2,...")
        return Grid(*method.sweep_grid)
    key, sep, listed = text.partition("=")
    values = tuple(v.strip() for v in listed.split(",") if v.strip())
    if not sep or not key.strip() or not values:
        raise UserError(f"--grid takes KEY=V1,V2,... (e.g. weight=0.1,1,10), got {text!r}")
    key = key.strip()
    if key not in method.Hyper.model_fields:
        known = ", ".join(method.Hyper.model_fields) or "none"
        raise UserError(f"{method.name} has no hyperparameter {key!r} (it has: {known})")
    return Grid(key, tuple(parse_pairs([f"{key}={v}"])[key] for v in values))


def _require_validation(project: Project) -> None:
    for task in project.config.tasks:
        if task.val is None:
            raise UserError(
                f"task {task.name!r} has no validation set (`val` in the task registry): a sweep selects "
                "on validation data, never on the test set"
            )
        load_eval_samples(project.data_root, task.model_copy(update={"eval": task.val}))  # validated before work


def _run_point(project: Project, folder: Path, method: ContinualMethod, hyper: dict, progress: Progress) -> dict:
    """Train the method's sequence once (`sequence.run_sequence`): its test matrix, then the same experts'
    validation scores after the last task."""
    names = project.config.task_names
    tested = point_project(project, folder, method, hyper)
    matrix = run_sequence(tested, method, hyper, progress)
    metrics = continual_metrics(matrix)
    # the same folder reading the validation sets: the trained experts are found as they are (train-task does not
    # run again) and the evaluation writes a new version beside the test one
    validation = [t.model_copy(update={"eval": t.val, "eval_annotations": None}) for t in project.config.tasks]
    validated = point_project(project, folder, method, hyper, tasks=validation)
    last = version_scores(
        evaluate(validated, method.stages_after(validated)[-1], {"method": method.name}, progress=progress).version
    )
    return {
        "test": {
            "last": metrics["last"],
            "avg_seen": metrics["avg_seen"],
            "bwt": metrics["bwt"],
            "matrix": matrix,
            "last_row": dict(zip(names, matrix[-1])),
        },
        "validation": {"last_row": {n: last[n] for n in names}},
    }


def relative_scores(points: list[dict], split: str) -> list[float]:
    """Per grid value, the mean over tasks of its score after the last task divided by the best any value of the
    grid reached on that task: every task weighs the same whatever its metric's scale (CIDEr's would otherwise
    decide). A task no value scores above 0 on is left out."""
    names = list(points[0][split]["last_row"])
    best = {n: max(p[split]["last_row"][n] for p in points) for n in names}
    scored = [n for n in names if best[n] > 0]
    return [sum(p[split]["last_row"][n] / best[n] for n in scored) / len(scored) if scored else 0.0 for p in points]


def selected_index(points: list[dict]) -> int:
    """The grid value with the best relative validation score; a tie goes to the earlier value of the grid."""
    scores = relative_scores(points, "validation")
    if any(not math.isfinite(v) for v in scores):
        raise UserError(f"a sweep value has a non-finite validation score: {scores}")
    return max(range(len(points)), key=lambda i: (scores[i], -i))


def sweep(
    project: Project, options: SweepOptions | dict | None = None, *, force: bool = False, progress: Progress = silent
) -> StageResult:
    options = stage_options(project.config, SWEEP.name, options)
    method = get_method(options.method or project.config.method)
    if not method.trains:
        raise UserError(f"{method.name} trains nothing, so there is nothing to sweep")
    grid = parse_grid(options.grid, method)
    hypers = [
        method_hyper(
            project, method, options.model_copy(update={"hparams": {**options.hparams, grid.parameter: value}})
        ).model_dump()
        for value in grid.values
    ]
    _require_validation(project)
    names = project.config.task_names
    config = {
        "options": options.model_dump(),
        "method": method.name,
        "grid": [grid.parameter, list(grid.values)],
        "hypers": hypers,
        "stages": project.config.stages,
        "profile": project.config.profile,
        "sources": {
            n: {
                **source_fingerprint(project, project.config.task(n)),
                "val": fingerprint([project.data_root / project.config.task(n).val]),
            }
            for n in names
        },
    }
    scratch = project.root / ".runs" / SWEEP.name / method.name / config_hash(config)[:16]

    def compute(writer) -> None:
        points = []
        for value, hyper in zip(grid.values, hypers):
            folder = scratch / f"{grid.parameter}={value}"
            points.append({"value": value, "hyper": hyper, **_run_point(project, folder, method, hyper, progress)})
        chosen = selected_index(points)
        for point, validation, test in zip(
            points, relative_scores(points, "validation"), relative_scores(points, "test")
        ):
            point["validation"]["relative"], point["test"]["relative"] = validation, test
        write_json(
            writer.path(SWEEP.files.result),
            {
                "method": method.name,
                "parameter": grid.parameter,
                "selected": points[chosen]["value"],
                "tasks": names,
                "points": points,
            },
        )
        writer.meta.update(
            selected={grid.parameter: points[chosen]["value"]},
            test_last=round(points[chosen]["test"]["last"], 3),
            test_bwt=round(points[chosen]["test"]["bwt"], 3),
        )
        shutil.rmtree(scratch, ignore_errors=True)

    return run_stage(project, SWEEP.name, method.name, config=config, inputs=[], compute=compute, force=force)


def sweep_rows(version) -> list[dict]:
    """One row per grid value of a sweep artifact: its value, both relative scores, and its test Last / BWT."""
    from dmole.artifacts.io import read_json

    swept = read_json(version.file(SWEEP.files.result))
    return [
        {
            swept["parameter"]: p["value"],
            "selected": p["value"] == swept["selected"],
            "validation relative": round(p["validation"]["relative"], 4),
            "test relative": round(p["test"]["relative"], 4),
            "test Last": round(p["test"]["last"], 2),
            "test BWT": round(p["test"]["bwt"], 2),
        }
        for p in swept["points"]
    ]
