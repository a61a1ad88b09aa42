"""Stage `eval`: the model as it stands after task t, on the test split of every task (spec/dmole.md §10).

Row 0 of the continual matrix is ``eval --zero-shot`` (the base model, shared by every method). Each method builds
its stage model and each test sample's route (`stages/methods/`): D-MoLE routes each sample to up to two tasks'
experts from the cached test embeddings, the baselines use their own stage models.
"""

from __future__ import annotations

import json

import numpy as np

from dmole.artifacts import Writer
from dmole.artifacts.io import write_parquet

from .config import parse_model
from .data.tasks import eval_set_hash, load_eval_samples
from .dmole.routing import acceptance_warning
from .errors import UserError
from .evaluation.grading import score_predictions
from .methods import get_method
from .methods.base import ZERO_SHOT, EvalPlan
from .metrics.caption import resolve_caption_tokenizer
from .metrics.field_graders import rule_for
from .options import EvalOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import EVAL, THRESHOLD_SWEEP
from .resolve import stage_options
from .runner import StageResult, run_stage, source_fingerprint

METRIC_NAMES = {
    "caption": "CIDEr-D",
    "vqa10": "vqa-accuracy",
    "short": "exact-match",
    "choice": "letter-accuracy",
    "grounding": "P@IoU0.5",
}


def _with_caption_tokenizer(project: Project, options: EvalOptions, tasks: list[str]) -> tuple[EvalOptions, list]:
    """``options`` with the caption tokenizer it stands for (hashed and recorded as the one used), and the one-line
    notice when it fell back from ptb, if any task is scored by CIDEr."""
    tokenizer, notice = resolve_caption_tokenizer(options.caption_tokenizer)
    captions = any(project.config.task(name).family == "caption" for name in tasks)
    return options.model_copy(update={"caption_tokenizer": tokenizer}), [notice] if notice and captions else []


def _check_grader(project: Project, grader: str, tasks: list[str]) -> None:
    """A one-line error before anything is generated when ``grader`` has no rule for one of ``tasks``."""
    for name in tasks:
        rule_for(grader, project.config.task(name).family, name)


def evaluate(
    project: Project,
    after: str,
    options: EvalOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    """Evaluate after task ``after`` (or ``zero-shot`` for the base model alone); ``options`` (what the caller
    sets) go over the workspace's defaults."""
    options = stage_options(project.config, EVAL.name, options)
    zero_shot = after == ZERO_SHOT
    method = get_method(options.method or project.config.method)
    options = options.model_copy(update={"method": None if zero_shot else method.name})
    stage = EVAL.name if zero_shot else method.stage(EVAL.name)
    tasks = project.config.task_names if zero_shot else method.eval_tasks(project, after)
    inputs = [] if zero_shot else method.eval_inputs(project, after)
    options, notices = _with_caption_tokenizer(project, options, tasks)
    _check_grader(project, options.grader, tasks)
    sources = {name: source_fingerprint(project, project.config.task(name)) for name in tasks}
    config = {
        "options": hashed(options),  # a grader other than dmole's is hashed, dmole's is not (options.NEUTRAL)
        "method": "base" if zero_shot else method.name,
        "after": after,
        "sources": sources,
    }

    def compute(writer: Writer) -> None:
        adapter = project.load_model()
        plan = EvalPlan(adapter.model, tasks) if zero_shot else method.evaluation(project, after, adapter)
        rows, warnings = [], list(notices)
        for task_name in plan.tasks:
            task = project.config.task(task_name)
            task_options = options.for_task(task)
            samples = load_eval_samples(project.data_root, task)
            routes, errors = (
                plan.routes_for(task_name, samples, task_options) if plan.routes_for else ([()] * len(samples), None)
            )
            predictions, scored = _predict_and_score(
                adapter,
                task,
                samples,
                plan.model,
                plan.around(routes),
                task_options,
                progress,
                f"eval {after}: {task_name}",
            )
            write_parquet(
                writer.path(EVAL.files.predictions.format(task=task_name)),
                {
                    "sample_id": [s.id for s in samples],
                    "prediction": predictions,
                    "parsed": [None if p is None else str(p) for p in scored.parsed],
                    "references": [json.dumps(s.references) for s in samples],
                    "score": scored.per_sample,
                    "routed_tasks": [list(r) for r in routes],
                    "router_errors": [list(map(float, e)) for e in errors]
                    if errors is not None
                    else [[]] * len(samples),
                },
            )
            task_id = project.config.task_index(task_name)
            routed = method.routes and not zero_shot
            if routed and task_id <= project.config.task_index(after):
                warnings.append(
                    acceptance_warning(
                        task_name,
                        sum(task_id in r for r in routes),
                        len(routes),
                        options.min_acceptance,
                        where=f"eval after {after}",
                    )
                )
            warnings.append(scored.notice)
            rows.append(
                {
                    "task": task_name,
                    "family": task.family,
                    # dmole's grader: its family's metric; another grader: the rule it scored the task with
                    "metric": METRIC_NAMES[task.family] if options.grader == "dmole" else scored.rule,
                    "score": scored.score,
                    "n": len(samples),
                    "tokenizer": scored.tokenizer,
                    "routing": options.routing if routed else "none",
                    "batch_size": task_options.batch_size,
                    "eval_set_sha256": eval_set_hash(project.data_root, task),
                }
            )
        write_parquet(writer.path(EVAL.files.scores), {k: [r[k] for r in rows] for k in rows[0]})
        writer.meta.update({r["task"]: round(r["score"], 3) for r in rows})
        writer.meta["grader"] = options.grader
        writer.meta["warnings"] = list(dict.fromkeys(w for w in warnings if w))

    return run_stage(project, stage, after, config=config, inputs=inputs, compute=compute, force=force)


def _predict_and_score(adapter, task, samples, model, around, options: EvalOptions, progress, description):
    from .evaluation.predict import predict  # torch: never imported to find a stage up to date

    predictions = predict(
        adapter,
        task,
        samples,
        batch_size=options.batch_size,
        model=model,
        around_batch=around,
        progress=progress,
        description=description,
    )
    return predictions, score_predictions(task, samples, predictions, options.caption_tokenizer, options.grader)


def threshold_sweep(
    project: Project,
    after: str,
    scales: list[float],
    options: EvalOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    """A routed method (D-MoLE) after ``after`` with every router threshold multiplied by each of ``scales``, at
    evaluation only (the authors' threshold-sensitivity study): per scale and task the score and how many samples
    got none, one or two experts; the version's summary holds Avg Last (the mean over all tasks) per scale."""
    if not scales:
        raise UserError("--threshold-scales needs at least one factor")
    for scale in scales:  # each is a threshold_scale, checked as that option is
        parse_model(EvalOptions, {"threshold_scale": scale}, source="--threshold-scales")
    scales = sorted(set(scales))
    options = stage_options(project.config, EVAL.name, options)
    method = get_method(options.method or project.config.method)
    if not method.routes:
        raise UserError(f"the threshold sweep changes D-MoLE's routing; {method.name} has none")
    options = options.model_copy(update={"method": method.name})
    names = method.eval_tasks(project, after)
    options, notices = _with_caption_tokenizer(project, options, names)
    _check_grader(project, options.grader, names)
    sources = {name: source_fingerprint(project, project.config.task(name)) for name in names}
    config = {"options": hashed(options), "after": after, "scales": scales, "sources": sources}

    def compute(writer: Writer) -> None:
        adapter = project.load_model()
        plan = method.evaluation(project, after, adapter)
        rows, scored_notices = [], []
        for scale in scales:
            scaled = options.model_copy(update={"threshold_scale": scale})
            for task_name in names:
                task = project.config.task(task_name)
                samples = load_eval_samples(project.data_root, task)
                routes, _ = plan.routes_for(task_name, samples, scaled.for_task(task))
                _, scored = _predict_and_score(
                    adapter,
                    task,
                    samples,
                    plan.model,
                    plan.around(routes),
                    options.for_task(task),
                    progress,
                    f"sweep x{scale:g}: {task_name}",
                )
                scored_notices.append(scored.notice)
                rows.append(
                    {
                        "scale": scale,
                        "task": task_name,
                        "score": scored.score,
                        "n": len(samples),
                        **{f"experts_{k}": sum(len(r) == k for r in routes) for k in (0, 1, 2)},
                    }
                )
        write_parquet(writer.path(THRESHOLD_SWEEP.files.table), {k: [r[k] for r in rows] for k in rows[0]})
        writer.meta["warnings"] = list(dict.fromkeys(w for w in [*notices, *scored_notices] if w))
        writer.meta.update(
            {
                f"avg_last@{scale:g}": round(float(np.mean([r["score"] for r in rows if r["scale"] == scale])), 3)
                for scale in scales
            }
        )

    return run_stage(
        project,
        method.stage(THRESHOLD_SWEEP.name),
        after,
        config=config,
        inputs=method.eval_inputs(project, after),
        compute=compute,
        force=force,
    )
