"""Stage `general`: general-ability retention. The base model and a method's model after a task (default: the
last) are both scored on general lmms-eval benchmarks (MME, POPE, ...) through the lmms-eval plugin (``--model
dmole``, `dmole.lmms`), in one lmms-eval session, into one artifact; the report sets the two side by side
(docs/metrics.md, "General-ability retention").

lmms-eval is run through its own `simple_evaluate`, as ``lmms-eval --model dmole --model_args
workspace=W,after=zero-shot`` and ``...,after=T,method=M`` would run it; its task names never reach the model
(the plugin routes each sample from its own inputs). lmms-eval is imported here only when the stage runs.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from dmole.artifacts import Writer
from dmole.artifacts.io import write_json, write_parquet

from .errors import UserError
from .methods import get_method
from .methods.base import ZERO_SHOT
from .options import GeneralOptions, hashed
from .project import Project
from .registry import GENERAL
from .resolve import stage_options
from .runner import StageResult, run_stage

PLUGIN_MODEL = "dmole"  # the plugin's lmms-eval model id (dmole_lmms/__init__.py MODEL_ID)


def general(
    project: Project, after: str | None = None, options: GeneralOptions | dict | None = None, *, force: bool = False
) -> StageResult:
    """Score the base model and ``options.method``'s model after ``after`` (default: its last task) on
    ``options.lmms_tasks``; ``options`` (what the caller sets) go over the workspace's defaults."""
    options = stage_options(project.config, GENERAL.name, options)
    method = get_method(options.method or project.config.method)
    stages = method.stages_after(project)
    if not stages:
        raise UserError(f"{method.name} trains nothing: general ability compares a trained model with the base")
    after = after or stages[-1]
    method.check_after(project, after)
    include = Path(options.include_path).expanduser().resolve() if options.include_path else None
    if include is not None and not include.is_dir():
        raise UserError(f"--include-path {options.include_path}: not a folder")
    options = options.model_copy(update={"method": method.name, "include_path": include and str(include)})
    if "," in str(project.root):
        raise UserError(f"lmms-eval's model_args cannot hold the workspace path {project.root} (it has a comma)")
    version = _lmms_eval_version()
    config = {"options": hashed(options), "after": after, "lmms_eval": version}

    def compute(writer: Writer) -> None:
        models = {
            "base": {"workspace": str(project.root), "after": ZERO_SHOT},
            "final": {"workspace": str(project.root), "after": after, "method": method.name},
        }
        manager = _task_manager(options)
        runs = {name: _evaluate(manager, model_args, options) for name, model_args in models.items()}
        result = {
            "method": method.name,
            "after": after,
            "lmms_eval": version,
            "tasks": options.lmms_tasks,
            "limit": options.limit,
            "models": {name: {"results": run["results"], "samples": run["samples"]} for name, run in runs.items()},
            "higher_is_better": runs["final"]["higher_is_better"],
            "task_versions": runs["final"]["versions"],
        }
        write_json(writer.path(GENERAL.files.result), result)
        for name, run in runs.items():
            for task, rows in run["replies"].items():
                path = writer.path(GENERAL.files.replies.format(model=name, task=task))
                write_parquet(path, {key: [row[key] for row in rows] for key in ("doc_id", "target", "reply")})
        writer.meta.update(
            {
                f"{name}.{task}.{metric}": round(value, 4)
                for name, run in runs.items()
                for task, metrics in run["results"].items()
                for metric, value in metrics.items()
            }
        )

    inputs = method.eval_inputs(project, after)
    return run_stage(
        project, method.stage(GENERAL.name), after, config=config, inputs=inputs, compute=compute, force=force
    )


def _lmms_eval_version() -> str:
    try:
        return metadata.version("lmms_eval")
    except metadata.PackageNotFoundError:
        raise UserError("dmole general needs lmms-eval: pip install 'dmole[lmms]'") from None


def _task_manager(options: GeneralOptions):
    """lmms-eval's task index (its own tasks and ``include_path``'s); one error naming every unknown task."""
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=options.include_path, verbosity="ERROR")
    unknown = [name for name in options.lmms_tasks if name not in manager.all_tasks]
    if unknown:
        where = f" or in {options.include_path}" if options.include_path else ""
        raise UserError(f"lmms-eval has no task {', '.join(map(repr, unknown))} (among its own{where})")
    return manager


def _evaluate(manager, model_args: dict, options: GeneralOptions) -> dict:
    """One model's lmms-eval run: each task's numeric metrics (``metric,filter`` -> value, no stderr), its
    documents scored, whether each metric is better higher, the tasks' versions and each document's reply."""
    from lmms_eval.evaluator import simple_evaluate

    raw = simple_evaluate(
        model=PLUGIN_MODEL,
        model_args=",".join(f"{key}={value}" for key, value in model_args.items()),  # as on its command line
        tasks=options.lmms_tasks,
        batch_size=options.batch_size or "auto",
        limit=options.limit,
        log_samples=True,
        task_manager=manager,
        verbosity="ERROR",
    )
    results = {
        task: {
            key: float(value)
            for key, value in metrics.items()
            if "_stderr" not in key and isinstance(value, int | float) and not isinstance(value, bool)
        }
        for task, metrics in raw["results"].items()
    }
    return {
        "results": results,
        "samples": {task: int(n.get("effective", 0)) for task, n in raw.get("n-samples", {}).items()},
        "higher_is_better": {
            task: {metric: bool(higher) for metric, higher in metrics.items()}
            for task, metrics in raw.get("higher_is_better", {}).items()
        },
        "versions": {task: str(v) for task, v in raw.get("versions", {}).items()},
        "replies": {
            task: [
                {"doc_id": int(s["doc_id"]), "target": str(s["target"]), "reply": _text(s["filtered_resps"][0])}
                for s in samples
            ]
            for task, samples in raw.get("samples", {}).items()
        },
    }


def _text(reply) -> str:
    """A generated reply as it is; another output type's (a log-likelihood pair, ...) as JSON."""
    return reply if isinstance(reply, str) else json.dumps(reply, default=str)
