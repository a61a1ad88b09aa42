"""Describe artifacts for `dmole ls` and `dmole show`: plain dicts the CLI renders as tables or JSON."""

from __future__ import annotations

from dmole.artifacts import Version
from dmole.artifacts.io import read_parquet

from .errors import UserError
from .methods import method_names
from .project import Project
from .registry import ALLOCATE, EVAL, FIT_ROUTER, STAGES, SWEEP
from .resolve import stage_options
from .runner import model_identity

HEAD_ROWS = 5


def tampered_since(project: Project, stage: str, task: str) -> list[dict]:
    """The version folders of ``stage``/``task`` newer than its latest version whose manifest is damaged or was
    edited by hand (no stage reads them), each with what is wrong."""
    latest = project.store.latest(stage, task)
    return [
        {"stage": stage, "task": task, "version": number, "path": str(path), "status": "tampered", "problem": problem}
        for number, path, problem in project.store.tampered(stage, task)
        if latest is None or number > latest.number
    ]


def current_sources(project: Project) -> dict[str, str | None]:
    """The workspace's sources now, for `Workspace.status`: the model's identity, None when its folder is gone."""
    try:
        return {"model": model_identity(project)}
    except UserError:
        return {"model": None}


def listing(project: Project) -> list[dict]:
    """The latest version of every stage and task, and any newer version folder whose manifest is tampered; every
    version built on another model than the workspace's (or before models were recorded) is stale."""
    sources = current_sources(project)
    rows = []
    for stage, task in project.store.stage_tasks():
        v = project.store.latest(stage, task)
        if v is not None:
            rows.append(
                {
                    "stage": stage,
                    "task": task,
                    "version": v.number,
                    "created": v.created,
                    "bytes": v.size_bytes,
                    "status": project.store.status(v, sources),
                    "problem": None,
                }
            )
        rows += [{**row, "created": "", "bytes": 0} for row in tampered_since(project, stage, task)]
    return rows


def _cell(value):
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(f'{x:.4g}' if isinstance(x, float) else str(x) for x in value[:3])}, … ({len(value)})]"
    return value


def describe_table(version: Version, name: str) -> dict:
    """Row count, columns, the first rows, and min / mean / max of numeric columns."""
    import pyarrow.compute as pc
    import pyarrow.types as pat

    table = read_parquet(version.file(name))
    stats = {}
    for column in table.column_names:
        data = table.column(column)
        if (pat.is_integer(data.type) or pat.is_floating(data.type)) and data.length() - data.null_count > 0:
            stats[column] = {"min": pc.min(data).as_py(), "mean": pc.mean(data).as_py(), "max": pc.max(data).as_py()}
    head = [{k: _cell(v) for k, v in row.items()} for row in table.slice(0, HEAD_ROWS).to_pylist()]
    return {"file": name, "rows": table.num_rows, "columns": table.column_names, "head": head, "stats": stats}


def describe(project: Project, stage: str, task: str, number: int | None = None) -> dict:
    store = project.store
    version = store.version(stage, task, number) if number else store.require(stage, task)
    manifest = version.manifest
    sources = current_sources(project)
    return {
        "stage": stage,
        "task": task,
        "version": version.number,
        "path": str(version.path),
        "status": store.status(version, sources),
        "stale_because": store.stale_because(version, sources),
        "created": version.created,
        "config_hash": manifest["config_hash"],
        "config": manifest["config"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "environment": manifest["environment"],
        "summary": manifest.get("summary", {}),
        "tables": [describe_table(version, o["path"]) for o in manifest["outputs"] if o["path"].endswith(".parquet")],
    }


def _router_record(project: Project, described: dict) -> dict:
    """τ, its quantile q and the quantile table of the router's in-task training errors."""
    from dmole.artifacts.io import read_json

    version = project.store.version(FIT_ROUTER.name, described["task"], described["version"])
    record = read_json(version.file(FIT_ROUTER.files.router))
    return {"quantile": record["quantile"], "threshold": record["threshold"], **record["quantiles"]}


def check_stage(stage: str) -> None:
    """A one-line error unless ``stage`` names a stage's artifacts: a declared stage, or METHOD.STAGE for another
    method's (`methods.base.stage_name`)."""
    method, _, declared = stage.rpartition(".")
    if declared not in STAGES or (method and method not in method_names()):
        raise UserError(
            f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}, another method's as "
            "METHOD.STAGE (e.g. seq-lora.train-task)"
        )


def _stage_keys(project: Project, stage: str) -> set[str]:
    """What ``stage``'s artifacts are keyed by: the sequence's tasks, and for some stages others (a sweep's method,
    the report's `all`)."""
    return {v.task for v in project.store.all_latest() if v.stage == stage}


def describe_stage(project: Project, stage: str, task: str | None, number: int | None) -> dict:
    """One task's artifact, or every task's latest when no task is named; plus stage-wide views."""
    check_stage(stage)
    names = project.config.task_names
    if task is not None:
        if task not in names and project.store.latest(stage, task) is None:
            keys = _stage_keys(project, stage)
            held = f"; '{stage}' has artifacts for {', '.join(sorted(keys))}" if keys else ""
            raise UserError(f"unknown task {task!r}; the workspace's tasks are: {', '.join(names)}{held}")
        tasks = [task]
    else:  # the sequence's tasks in order, then the stage's other keys
        tasks = list(names) + sorted(_stage_keys(project, stage) - set(names))
    if task is not None and number:
        found, tampered = [describe(project, stage, task, number)], []
    else:
        found = [describe(project, stage, t) for t in tasks if project.store.latest(stage, t)]
        tampered = [row for t in tasks for row in tampered_since(project, stage, t)]
    if not found and not tampered:
        if task is not None:
            describe(project, stage, task)  # says that the task has none
        raise UserError(f"no '{stage}' artifacts in this workspace yet")
    result = {"stage": stage, "artifacts": found, "tampered": tampered}
    if stage == FIT_ROUTER.name:
        from .fit_router import routing_confusion

        scale = stage_options(project.config, EVAL.name).threshold_scale
        result["threshold_scale"] = scale
        result["confusion"] = routing_confusion(project, scale)
        result["quantiles"] = {a["task"]: _router_record(project, a) for a in found}
    if stage == ALLOCATE.name:
        from .allocate import allocation_table

        result["allocation"] = allocation_table(project)
    if stage == SWEEP.name:  # imported here: the sweep stage imports torch
        from .sweep import sweep_rows

        result["sweeps"] = {a["task"]: sweep_rows(project.store.version(stage, a["task"], a["version"])) for a in found}
    return result
