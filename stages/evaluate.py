"""Stage `eval`: the model as it stands after task t, on the test split of every task (spec/dmole.md §10).

Row 0 of the continual matrix is ``eval --zero-shot`` (the base model, shared by every method). D-MoLE
routes each sample to up to two tasks' experts from the cached test embeddings; the baselines use
their own stage models (see `methods.py`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from artifacts import Version, Writer
from artifacts.io import write_parquet

from .config import Method, Strict
from .data.samples import EvalSample
from .data.tasks import load_eval_samples, task_files
from .dmole.experts import ExpertModel
from .dmole.routing import acceptance_warning, batch_vote, confidence_weights, per_sample
from .embed import source_fingerprint
from .errors import UserError
from .evaluation.predict import batch_indices, predict, score_predictions
from .fit_router import load_bank, load_embeddings
from .methods import JOINT_TASK, dmole_model, expert_folder, merged_model, towers, trained
from .naming import is_dmole, stage_name
from .progress import Progress, silent
from .project import Project
from .runner import StageResult, run_stage

STAGE = "eval"
ZERO_SHOT = "zero-shot"
SWEEP = "threshold-sweep"  # D-MoLE only: its routing is what the thresholds change
SWEEP_TABLE = "sweep.parquet"
METRIC_NAMES = {"caption": "CIDEr-D", "vqa10": "vqa-accuracy", "short": "exact-match", "choice": "letter-accuracy",
                "grounding": "P@IoU0.5"}


class EvalOptions(Strict):
    method: Method | None = Field(default=None, description="dmole, seq-lora, finetune or joint")
    batch_size: int = Field(default=8, gt=0)
    routing: str = Field(default="per-sample", pattern="^(per-sample|batch-vote)$")
    routing_order: str = Field(default="filter-then-rank", pattern="^(filter-then-rank|rank-then-filter)$")
    threshold_scale: float = Field(default=1.0, gt=0)
    top: int = Field(default=2, gt=0, description="experts per sample at most")
    vote_support: float = Field(default=0.3, gt=0, le=1)
    second_expert: Literal["any", "margin", "weighted"] = Field(
        default="margin", description="per-sample rule for a second expert: margin (its relative error within "
                                      "second_margin x the first's; measured best, docs/benchmarks.md), any "
                                      "accepting router (the paper's top-2), or weighted (by router confidence)")
    second_margin: float = Field(default=2.0, gt=0)
    caption_tokenizer: str = Field(default="simple", pattern="^(simple|ptb)$")
    min_acceptance: float = Field(default=0.5, ge=0, le=1,
                                  description="warn when a seen task's own router accepts fewer of its samples")


@dataclass
class _Plan:
    """What one evaluation loads: the model, the tasks it is scored on, its inputs and how batches route."""

    model: object
    tasks: list[str]
    inputs: list[Version]
    router: Callable[[list[int], dict], AbstractContextManager] | None = None  # fixed routing (oracle)
    routes_for: Callable[[str, list[EvalSample]], tuple[list[tuple[int, ...]], np.ndarray]] | None = None
    experts: ExpertModel | None = None


def _test_embeddings(project: Project, task: str) -> Version:
    return project.store.require("embed", task, hint=f"dmole embed --task {task}")


def _dmole_inputs(project: Project, stage_index: int, method: str) -> list[Version]:
    names = project.config.task_names
    return ([trained(project, method, n) for n in names[:stage_index]]
            + [project.store.require("fit-router", n, hint=f"dmole fit-router --task {n}") for n in names[:stage_index]]
            + [_test_embeddings(project, n) for n in names])


def _dmole_routing(project: Project, stage_index: int, options: EvalOptions):
    """Per task, the routed expert set of each test sample (and the router errors behind it)."""
    bank = load_bank(project, project.config.task_names[:stage_index])

    def routes_for(task: str, samples: list[EvalSample]) -> tuple[list[tuple[int, ...]], np.ndarray]:
        ids, matrix, metadata = load_embeddings(_test_embeddings(project, task), "test")
        position = {sample_id: i for i, sample_id in enumerate(ids)}
        if any(s.id not in position for s in samples):
            raise UserError(f"the test embeddings of '{task}' do not cover its evaluation file; "
                            f"re-run `dmole embed --task {task}`")
        errors = bank.errors(matrix[[position[s.id] for s in samples]], metadata)
        if options.routing == "batch-vote":  # the reference's vote over each batch predict() will generate
            routes = []
            for indices in batch_indices(len(samples), options.batch_size):
                chosen = batch_vote(errors[indices], bank.thresholds, scale=options.threshold_scale,
                                    support=options.vote_support)
                routes += [chosen] * len(indices)
            return routes, errors
        thresholds = bank.thresholds * options.threshold_scale
        routes = per_sample(errors, thresholds, top=options.top, order=options.routing_order,
                            second_margin=options.second_margin if options.second_expert == "margin" else None)
        if options.second_expert == "weighted":
            routes = [confidence_weights(row, thresholds, route) for row, route in zip(errors, routes)]
        return routes, errors

    return routes_for


def plan_evaluation(project: Project, method: str, after: str, options: EvalOptions, adapter=None) -> _Plan:
    """Build (when ``adapter`` is given) or just name the inputs of the evaluation after ``after``."""
    names = project.config.task_names
    if after == ZERO_SHOT:
        return _Plan(adapter.model if adapter else None, names, [])
    if method == "joint":
        if after != JOINT_TASK:
            raise UserError(f"joint is evaluated once, after training on every task: use --after {JOINT_TASK}")
        version = trained(project, "joint", JOINT_TASK)
        return _single_adapter_plan(adapter, version, names, project, task_id=1)
    index = project.config.task_index(after)
    if method == "finetune":
        return _single_adapter_plan(adapter, trained(project, "finetune", after), [after], project, task_id=index)
    if method == "seq-lora":
        inputs = [trained(project, "seq-lora", n) for n in names[:index]]
        return _Plan(merged_model(project, adapter, index)[0] if adapter else None, names, inputs)
    inputs = _dmole_inputs(project, index, method)
    if adapter is None:
        return _Plan(None, names, inputs)
    experts, _ = dmole_model(project, adapter, index, method)
    return _Plan(experts.model, names, inputs, routes_for=_dmole_routing(project, index, options), experts=experts)


def _single_adapter_plan(adapter, version: Version, tasks: list[str], project: Project, task_id: int) -> _Plan:
    if adapter is None:
        return _Plan(None, tasks, [version])
    experts = ExpertModel(adapter.model, towers(adapter), str(project.model_path))
    experts.load_expert(task_id, expert_folder(version))
    return _Plan(experts.model, tasks, [version], experts=experts,
                 router=lambda indices, inputs: experts.routed([(task_id,)] * len(indices),
                                                              vision_rows=adapter.vision_row_samples(inputs)))


def _eval_set_hash(project: Project, task: str) -> str:
    digest = hashlib.sha256()
    for path in task_files(project.data_root, project.config.task(task))[1:]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def evaluate(project: Project, after: str, options: EvalOptions = EvalOptions(), *, force: bool = False,
             progress: Progress = silent) -> StageResult:
    """Evaluate after task ``after`` (or ``zero-shot`` for the base model alone)."""
    method = options.method or project.config.method
    options = options.model_copy(update={"method": None if after == ZERO_SHOT else method})
    stage = STAGE if after == ZERO_SHOT else stage_name(STAGE, method)
    plan = plan_evaluation(project, method, after, options)
    sources = {name: source_fingerprint(project, project.config.task(name)) for name in plan.tasks}
    config = {"options": options.model_dump(), "method": method if after != ZERO_SHOT else "base",
              "after": after, "sources": sources}

    def compute(writer: Writer) -> None:
        adapter = project.load_model()
        built = plan_evaluation(project, method, after, options, adapter)
        rows, warnings = [], []
        for task_name in built.tasks:
            task = project.config.task(task_name)
            samples = load_eval_samples(project.data_root, task)
            routes, errors = (built.routes_for(task_name, samples) if built.routes_for
                              else ([()] * len(samples), None))
            around = built.router or _routed(built.experts, routes, adapter)
            predictions, scored = _predict_and_score(adapter, task, samples, built.model, around, options, progress,
                                                     f"eval {after}: {task_name}")
            write_parquet(writer.path(f"predictions/{task_name}.parquet"), {
                "sample_id": [s.id for s in samples], "prediction": predictions,
                "parsed": [None if p is None else str(p) for p in scored.parsed],
                "references": [json.dumps(s.references) for s in samples], "score": scored.per_sample,
                "routed_tasks": [list(r) for r in routes],
                "router_errors": [list(map(float, e)) for e in errors] if errors is not None else [[]] * len(samples)})
            task_id = project.config.task_index(task_name)
            if built.routes_for and task_id <= project.config.task_index(after):
                warnings.append(acceptance_warning(task_name, sum(task_id in r for r in routes), len(routes),
                                                   options.min_acceptance, where=f"eval after {after}"))
            rows.append({"task": task_name, "family": task.family, "metric": METRIC_NAMES[task.family],
                         "score": scored.score, "n": len(samples),
                         "tokenizer": options.caption_tokenizer if task.family == "caption" else "",
                         "routing": options.routing if built.routes_for else "none",
                         "batch_size": options.batch_size, "eval_set_sha256": _eval_set_hash(project, task_name)})
        write_parquet(writer.path("scores.parquet"), {k: [r[k] for r in rows] for k in rows[0]})
        writer.meta.update({r["task"]: round(r["score"], 3) for r in rows})
        writer.meta["warnings"] = [w for w in warnings if w]

    return run_stage(project, stage, after, config=config, inputs=plan.inputs, compute=compute, force=force)


def _predict_and_score(adapter, task, samples, model, around, options: EvalOptions, progress, description):
    predictions = predict(adapter, task, samples, batch_size=options.batch_size, model=model, around_batch=around,
                          progress=progress, description=description)
    return predictions, score_predictions(task, samples, predictions, options.caption_tokenizer)


def threshold_sweep(project: Project, after: str, scales: list[float], options: EvalOptions = EvalOptions(), *,
                    force: bool = False, progress: Progress = silent) -> StageResult:
    """D-MoLE after ``after`` with every router threshold multiplied by each of ``scales``, at evaluation only
    (the authors' threshold-sensitivity study): per scale and task the score and how many samples got none,
    one or two experts; the version's summary holds Avg Last (the mean over all tasks) per scale."""
    if not scales or any(scale <= 0 for scale in scales):
        raise UserError(f"--threshold-scales needs positive factors, got {scales}")
    scales = sorted(set(scales))
    method = options.method or project.config.method
    if not is_dmole(method):
        raise UserError(f"the threshold sweep changes D-MoLE's routing; {method} has none")
    options = options.model_copy(update={"method": method})
    index = project.config.task_index(after)
    names = project.config.task_names
    sources = {name: source_fingerprint(project, project.config.task(name)) for name in names}
    config = {"options": options.model_dump(), "after": after, "scales": scales, "sources": sources}

    def compute(writer: Writer) -> None:
        adapter = project.load_model()
        experts, _ = dmole_model(project, adapter, index, method)
        rows = []
        for scale in scales:
            routes_for = _dmole_routing(project, index, options.model_copy(update={"threshold_scale": scale}))
            for task_name in names:
                task = project.config.task(task_name)
                samples = load_eval_samples(project.data_root, task)
                routes, _ = routes_for(task_name, samples)
                _, scored = _predict_and_score(adapter, task, samples, experts.model, _routed(experts, routes, adapter),
                                               options, progress, f"sweep x{scale:g}: {task_name}")
                rows.append({"scale": scale, "task": task_name, "score": scored.score, "n": len(samples),
                             **{f"experts_{k}": sum(len(r) == k for r in routes) for k in (0, 1, 2)}})
        write_parquet(writer.path(SWEEP_TABLE), {k: [r[k] for r in rows] for k in rows[0]})
        writer.meta.update({f"avg_last@{scale:g}": round(float(np.mean([r["score"] for r in rows
                                                                          if r["scale"] == scale])), 3)
                            for scale in scales})

    return run_stage(project, stage_name(SWEEP, method), after, config=config,
                     inputs=_dmole_inputs(project, index, method), compute=compute, force=force)


def _routed(experts: ExpertModel | None, routes: list[tuple[int, ...]], adapter):
    """around_batch that activates each sample's routed experts (D-MoLE); nothing to do without experts."""
    if experts is None:
        return None
    return lambda indices, inputs: experts.routed([routes[i] for i in indices],
                                                  vision_rows=adapter.vision_row_samples(inputs))
