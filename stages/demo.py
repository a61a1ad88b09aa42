"""`dmole demo`: the whole continual loop on the synthetic benchmark, for D-MoLE and sequential LoRA (or any
methods, up to the paper's Table 2).

It is exactly the documented shell loop, as function calls: every step is an ordinary stage that
writes (or finds up to date) its versioned artifact, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .allocate import allocate
from .embed import embed
from .evaluate import ZERO_SHOT, evaluate
from .fit_router import fit_router
from .method_groups import DEMO_METHODS, GROUPS
from .methods import get_method
from .progress import Progress, silent
from .project import Project
from .report import report
from .runner import StageResult
from .synth import SynthResult, synthesize
from .train_task import train_task
from .zc_score import zc_score


def demo_methods(text: str) -> tuple[str, ...]:
    """``--methods``: comma-separated method names or groups (``table2``: the paper's Table 2 methods; ``recent``:
    the ones 2026's tables add), each method once."""
    names = [name for part in text.split(",") if part.strip() for name in GROUPS.get(part.strip(), (part.strip(),))]
    for name in names:
        get_method(name)  # an unknown name fails before any work
    return tuple(dict.fromkeys(names))


@dataclass
class DemoResult:
    workspace: Path
    report: StageResult
    seconds: float


def run_pipeline(
    project: Project,
    methods: Sequence[str] = DEMO_METHODS,
    *,
    on_result: Callable[[StageResult], None] = lambda r: None,
    progress: Progress = silent,
) -> StageResult:
    """Per task: embed, fit-router, zc-score; then zero-shot; then per method (allocate), train and evaluate."""
    chosen = [get_method(name) for name in methods]
    for task in project.config.task_names:
        on_result(embed(project, task, progress=progress))
        on_result(fit_router(project, task))
        on_result(zc_score(project, task))
    on_result(evaluate(project, ZERO_SHOT, progress=progress))
    for method in chosen:
        if method.allocates:  # D-MoLE, or an ablation with its own allocation rule
            for task in project.config.task_names:
                on_result(allocate(project, task, {"method": method.name}))
        for after in method.stages_after(project):
            on_result(train_task(project, after, {"method": method.name}, progress=progress))
            on_result(evaluate(project, after, {"method": method.name}, progress=progress))
    return report(project)


def demo(
    out: Path,
    *,
    methods: Sequence[str] = DEMO_METHODS,
    family: str = "llava",
    seed: int = 0,
    on_synth: Callable[[SynthResult], None] = lambda r: None,
    on_result: Callable[[StageResult], None] = lambda r: None,
    progress: Progress = silent,
) -> DemoResult:
    start = time.perf_counter()
    synthetic = synthesize(out, family=family, seed=seed, progress=progress)
    on_synth(synthetic)
    project = Project.open(synthetic.workspace)
    final = run_pipeline(project, methods, on_result=on_result, progress=progress)
    on_result(final)
    return DemoResult(synthetic.workspace, final, time.perf_counter() - start)
