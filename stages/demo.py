"""`dmole demo`: the whole continual loop on the synthetic benchmark, for D-MoLE and two baselines.

It is exactly the documented shell loop, as function calls: every step is an ordinary stage that
writes (or finds up to date) its versioned artifact, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .allocate import AllocateOptions, allocate
from .config import stage_options
from .embed import EmbedOptions, embed
from .evaluate import ZERO_SHOT, EvalOptions, evaluate
from .fit_router import FitRouterOptions, fit_router
from .naming import is_dmole
from .progress import Progress, silent
from .project import Project
from .report import report
from .runner import StageResult
from .synth import SynthResult, synthesize
from .train_task import TrainTaskOptions, train_task
from .zc_score import ZcScoreOptions, zc_score

DEMO_METHODS = ("dmole", "seq-lora", "finetune")


@dataclass
class DemoResult:
    workspace: Path
    report: StageResult
    seconds: float


def run_pipeline(project: Project, methods: tuple[str, ...] = DEMO_METHODS, *,
                 on_result: Callable[[StageResult], None] = lambda r: None, progress: Progress = silent) -> StageResult:
    """Per task: embed, fit-router, zc-score, allocate; then zero-shot; then train and evaluate each method."""
    config = project.config

    def options(stage: str, model, **overrides):
        return stage_options(config, stage, model, overrides)

    for task in config.task_names:
        on_result(embed(project, task, options("embed", EmbedOptions), progress=progress))
        on_result(fit_router(project, task, options("fit-router", FitRouterOptions)))
        on_result(zc_score(project, task, options("zc-score", ZcScoreOptions)))
        on_result(allocate(project, task, options("allocate", AllocateOptions)))
    on_result(evaluate(project, ZERO_SHOT, options("eval", EvalOptions), progress=progress))
    for method in methods:
        if is_dmole(method) and method != "dmole":  # an ablation allocates by its own rule
            for task in config.task_names:
                on_result(allocate(project, task, options("allocate", AllocateOptions, method=method)))
        for task in config.task_names:
            on_result(train_task(project, task, options("train-task", TrainTaskOptions, method=method),
                                 progress=progress))
            on_result(evaluate(project, task, options("eval", EvalOptions, method=method), progress=progress))
    return report(project)


def demo(out: Path, *, family: str = "llava", seed: int = 0, on_synth: Callable[[SynthResult], None] = lambda r: None,
         on_result: Callable[[StageResult], None] = lambda r: None, progress: Progress = silent) -> DemoResult:
    start = time.perf_counter()
    synthetic = synthesize(out, family=family, seed=seed, progress=progress)
    on_synth(synthetic)
    project = Project.open(synthetic.workspace)
    final = run_pipeline(project, on_result=on_result, progress=progress)
    on_result(final)
    return DemoResult(synthetic.workspace, final, time.perf_counter() - start)
