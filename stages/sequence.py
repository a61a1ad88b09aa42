"""One continual method's whole task sequence in a scratch workspace of its own, and the matrix it gives.

What `sweep` (a method at each value of a hyperparameter) and `repeat` (a method under several seeds and task
orders) run once per point: a workspace under the main one's ``.runs/`` with the main one's model, data, stage
settings and profile, and what the point changes (the method's hyperparameters, the tasks and their order, the
seed). It starts with the main workspace's artifacts that no training made (`SEEDED`): each is used where its
configuration and inputs are those the point needs (the stages decide, as always) and computed again otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dmole.artifacts.layout import LOCK

from .allocate import allocate
from .config import TaskSpec, WorkspaceConfig
from .embed import embed
from .evaluate import ZERO_SHOT, evaluate
from .fit_router import fit_router
from .methods import get_method
from .methods.base import ContinualMethod, Matrix
from .progress import Progress
from .project import Project, write_workspace
from .registry import ALLOCATE, EMBED, EVAL, FIT_ROUTER, ZC_SCORE, with_options
from .report import version_scores
from .train_task import train_task
from .zc_score import zc_score

# what a scratch workspace starts with: the frozen base's embeddings, routers, proxy scores and D-MoLE's
# allocations (what parity sizes a baseline by), and the zero-shot row
SEEDED = (EMBED.name, FIT_ROUTER.name, ZC_SCORE.name, ALLOCATE.name, f"{EVAL.name}/{ZERO_SHOT}")
PARITY_METHOD = "dmole"  # the method whose allocations `parity` sizes a baseline to


def _link_or_copy(source: str, target: str) -> None:
    """A version's files never change once committed, so a hard link shares them; a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def point_config(
    project: Project,
    method: ContinualMethod,
    hyper: dict,
    *,
    tasks: list[TaskSpec] | None = None,
    seed: int | None = None,
) -> WorkspaceConfig:
    """The main workspace's configuration (its model and data by absolute path) with ``hyper`` as the method's
    hyperparameters, ``tasks`` (default: the main one's, in its order) as its task sequence and (``seed``) that
    seed in every stage that draws at random and as the workspace's seed."""
    config = project.config
    stages = config.stages
    if seed is not None:
        seeded = [name for name, stage in with_options().items() if "seed" in stage.options.model_fields]
        stages = {**stages, **{name: {**stages.get(name, {}), "seed": seed} for name in seeded}}
    return WorkspaceConfig.model_validate(
        {
            **config.model_dump(),
            "model": str(project.model_path.resolve()),
            "data": str(project.data_root.resolve()),
            "tasks": [t.model_dump(exclude_defaults=True) for t in (config.tasks if tasks is None else tasks)],
            "method": method.name,
            "methods": {**config.methods, method.name: hyper},
            "stages": stages,
            "seed": config.seed if seed is None else seed,
        }
    )


def point_project(project: Project, folder: Path, method: ContinualMethod, hyper: dict, **changes) -> Project:
    """A scratch workspace in ``folder`` with `point_config`'s configuration (``changes``: its ``tasks`` and
    ``seed``), holding the main workspace's `SEEDED` artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    write_workspace(folder, point_config(project, method, hyper, **changes))
    for shared in (*SEEDED, method.stage(ALLOCATE.name)):
        source, target = project.root / shared, folder / shared
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(LOCK))
    return Project.open(folder)


def prepare(project: Project, method: ContinualMethod, hyper: dict, progress: Progress) -> None:
    """What the method reads besides its own earlier tasks, in the workspace's task order: the embeddings and
    routers of a routing method, the allocations of an allocating one (D-MoLE's under ``parity``)."""
    names = project.config.task_names
    if method.routes:
        for task in names:
            embed(project, task, progress=progress)
            fit_router(project, task)
    allocating = method if method.allocates else get_method(PARITY_METHOD) if hyper.get("parity") else None
    if allocating is not None:
        for task in names:
            zc_score(project, task)
        for task in names:  # in order: each allocation builds on the one before
            allocate(project, task, {"method": allocating.name})


def run_sequence(project: Project, method: ContinualMethod, hyper: dict, progress: Progress) -> Matrix:
    """Train and evaluate the method over the workspace's tasks in order; its continual matrix (row 0 zero-shot,
    row t after task t, columns in the workspace's order). Scores are read from each evaluation's own result,
    never from the store's latest version, which a later evaluation may move."""
    names = project.config.task_names
    prepare(project, method, hyper, progress)
    zero = version_scores(evaluate(project, ZERO_SHOT, progress=progress).version)
    rows = {}
    for after in method.stages_after(project):
        train_task(project, after, {"method": method.name}, progress=progress)
        scores = version_scores(evaluate(project, after, {"method": method.name}, progress=progress).version)
        rows[after] = [scores.get(n) for n in names]
    return method.matrix([zero.get(n) for n in names], rows, names)
