"""Describe artifacts for `dmole ls` and `dmole show`: plain dicts the CLI renders as tables or JSON."""

from __future__ import annotations

from artifacts import Version
from artifacts.io import read_parquet

from .errors import UserError
from .project import Project

HEAD_ROWS = 5


def listing(project: Project) -> list[dict]:
    return [{"stage": v.stage, "task": v.task, "version": v.number, "created": v.created,
             "bytes": v.size_bytes, "status": project.store.status(v)} for v in project.store.all_latest()]


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
    return {
        "stage": stage, "task": task, "version": version.number, "path": str(version.path),
        "status": store.status(version), "stale_because": store.stale_inputs(version),
        "created": version.created, "config_hash": manifest["config_hash"], "config": manifest["config"],
        "inputs": manifest["inputs"], "outputs": manifest["outputs"], "environment": manifest["environment"],
        "summary": manifest.get("summary", {}),
        "tables": [describe_table(version, o["path"]) for o in manifest["outputs"] if o["path"].endswith(".parquet")],
    }


def _router_record(project: Project, described: dict) -> dict:
    """τ, its quantile q and the quantile table of the router's in-task training errors."""
    from artifacts.io import read_json

    record = read_json(project.store.version("fit-router", described["task"], described["version"]).file("router.json"))
    return {"quantile": record["quantile"], "threshold": record["threshold"], **record["quantiles"]}


def describe_stage(project: Project, stage: str, task: str | None, number: int | None) -> dict:
    """One task's artifact, or every task's latest when no task is named; plus stage-wide views."""
    if task is not None:
        if project.store.latest(stage, task) is None:  # not a key of this stage: name the workspace's tasks
            project.config.task(task)
        found = [describe(project, stage, task, number)]
    else:
        # the sequence's tasks in order, then the stage's other keys (a sweep's method, the report's `all`)
        keys = [v.task for v in project.store.all_latest() if v.stage == stage]
        ordered = [t for t in project.config.task_names if t in keys] + sorted(set(keys) - set(project.config.task_names))
        found = [describe(project, stage, t) for t in ordered]
        if not found:
            raise UserError(f"no '{stage}' artifacts in this workspace yet")
    result = {"stage": stage, "artifacts": found}
    if stage == "fit-router":
        from .fit_router import routing_confusion
        from .options import stage_options

        scale = stage_options(project.config, "eval").threshold_scale
        result["threshold_scale"] = scale
        result["confusion"] = routing_confusion(project, scale)
        result["quantiles"] = {a["task"]: _router_record(project, a) for a in found}
    if stage == "allocate":
        from .allocate import allocation_table

        result["allocation"] = allocation_table(project)
    if stage == "sweep":  # imported here: the sweep stage imports torch
        from .sweep import sweep_rows

        result["sweeps"] = {a["task"]: sweep_rows(project.store.version(stage, a["task"], a["version"])) for a in found}
    return result
