"""Stage `report`: the continual matrix R of every method and its metrics (spec/dmole.md §11).

Row 0 is the shared zero-shot evaluation; row t is the method's evaluation after task t, as the method assembles
its matrix (`ContinualMethod.matrix`): the finetune upper bound fills its off-diagonal cells from its per-task
runs and the zero-shot row, joint fills only its last row, zero-shot repeats row 0.

Beside the matrices, report.md holds one PNG figure and one table per section the workspace has artifacts for
(`stages/figures/`): expert allocation, expert activation, zero-cost sensitivity and RoE's layer skipping; it ends
with the run's settings (device, CUDA, torch, dtype, global batches, seeds, graders: figures/run_settings.py), which
metrics.json and `report --json` carry under ``run_settings``. Where `dmole repeat` was run, the seeds-and-orders
section's mean ± std are carried there too (under ``seeds_and_orders``), and where `dmole general` was run, the
general-ability section's base and final scores (under ``general_ability``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from dmole.artifacts import Version, Writer
from dmole.artifacts.io import copy_all_or_none, read_json, read_parquet, write_json, write_parquet

from .errors import UserError
from .figures import (
    activation,
    allocation,
    general,
    matrix,
    repeats,
    rescores,
    roe_skips,
    roe_sweep,
    run_settings,
    sensitivity,
    sweeps,
    thresholds,
)
from .figures.markdown import fmt
from .figures.markdown import table as md_table
from .methods import REGISTRY
from .methods.base import ZERO_SHOT
from .metrics.continual import continual_metrics
from .metrics.field_continual import field_metrics
from .project import Project
from .registry import EVAL, REPORT, TRAIN_TASK
from .runner import StageResult, run_stage

REPORT_TASK = "all"
METRIC_KEYS = ("last", "avg_seen", "avg_all", "bwt", "fwt")


def version_scores(version: Version) -> dict[str, float]:
    """Each task's score in an evaluation version."""
    return {row["task"]: row["score"] for row in read_parquet(version.file(EVAL.files.scores)).to_pylist()}


def method_matrix(project: Project, method) -> tuple[list[list[float | None]], list[Version]] | None:
    """R for ``method`` (None if it has no evaluation yet) and the evaluations it was read from."""
    names = project.config.task_names
    zero = project.store.latest(EVAL.name, ZERO_SHOT)
    zero_scores = version_scores(zero) if zero else {}
    stage = method.stage(EVAL.name)
    found = {after: project.store.latest(stage, after) for after in method.stages_after(project)}
    found = {after: version for after, version in found.items() if version is not None}
    rows = {after: [version_scores(version).get(n) for n in names] for after, version in found.items()}
    matrix = method.matrix([zero_scores.get(n) for n in names], rows, names)
    if matrix is None:
        return None
    return matrix, [v for v in (zero, *found.values()) if v is not None]


def collect(project: Project) -> tuple[dict, list[Version]]:
    methods, used = {}, []
    for method in REGISTRY.values():
        found = method_matrix(project, method)
        if found is None:
            continue
        matrix, versions = found
        metrics = continual_metrics(matrix)
        warnings = [w for v in versions for w in v.manifest.get("summary", {}).get("warnings", [])]
        methods[method.name] = {
            **{k: metrics[k] for k in METRIC_KEYS},
            "per_task": metrics["per_task"],
            "matrix": matrix,
            "field": field_metrics(matrix),
            "warnings": list(dict.fromkeys(warnings)),
            "hyper": project.config.methods.get(method.name, {}),
        }
        if method.routes:
            methods[method.name]["second_experts"] = second_experts(project, versions[-1])
        used += [v for v in versions if v not in used]
    if not methods:
        raise UserError("nothing to report yet: run `dmole eval --zero-shot` and `dmole eval --after <task>`")
    return {"tasks": project.config.task_names, "methods": methods}, used


def training_costs(project: Project, methods: list[str]) -> tuple[dict, list[Version]]:
    """Per method, its training time and peak memory (`training_cost`), and the train-task runs they came from.
    Kept apart from the results (`REPORT.files.costs`, not report.md): they measure the machine, so two runs that
    compute the same numbers still differ here."""
    costs, used = {}, []
    for name in methods:
        costs[name], trained = training_cost(project, REGISTRY[name])
        used += trained
    return costs, used


def training_cost(project: Project, method) -> tuple[dict, list[Version]]:
    """The method's train-task runs (the latest of each stage): their wall time summed (``train_seconds``) and their
    highest peak memory (``peak_memory``: the accelerator's where recorded, else the process's resident set), and
    those runs; None for either when nothing was trained or recorded."""
    trained = [
        v
        for v in (
            project.store.latest(method.stage(TRAIN_TASK.name), after) for after in (method.stages_after(project))
        )
        if v is not None
    ]
    summaries = [v.manifest["summary"] for v in trained]
    kind = "gpu" if any("peak_gpu_bytes" in s for s in summaries) else "rss"
    peaks = [s[f"peak_{kind}_bytes"] for s in summaries if f"peak_{kind}_bytes" in s]
    return {
        "train_seconds": sum(s["seconds"] for s in summaries) if summaries else None,
        "peak_memory": {"kind": kind, "bytes": max(peaks)} if peaks else None,
    }, trained


def second_experts(project: Project, version: Version) -> dict:
    """In the evaluation ``version`` (a D-MoLE stage's), how many test samples got two experts and their mean
    score, beside the mean score of the samples with one expert."""
    evaluated = [
        t for t in project.config.task_names if (version.path / EVAL.files.predictions.format(task=t)).is_file()
    ]
    rows = [r for t in evaluated for r in read_parquet(version.file(EVAL.files.predictions.format(task=t))).to_pylist()]

    def mean(scores: list[float]) -> float | None:
        return sum(scores) / len(scores) if scores else None

    two = [r["score"] for r in rows if len(r["routed_tasks"]) == 2]
    one = [r["score"] for r in rows if len(r["routed_tasks"]) == 1]
    return {
        "after": version.task,
        "samples": len(rows),
        "two": len(two),
        "mean_two": mean(two),
        "one": len(one),
        "mean_one": mean(one),
    }


def sections(project: Project, result: dict) -> tuple[list[tuple[ModuleType, dict]], list[Version]]:
    """(figure module, its data) for every figure the workspace has the artifacts for, and those artifacts."""
    found, used = [(matrix, result)], []
    for module in (
        allocation,
        activation,
        sensitivity,
        thresholds,
        rescores,
        roe_skips,
        roe_sweep,
        sweeps,
        repeats,
        general,
    ):
        gathered = module.gather(project)
        if gathered is not None:
            found.append((module, gathered[0]))
            used += gathered[1]
    return found, used


def markdown(project: Project, found: list[tuple[ModuleType, dict]], result: dict) -> str:
    lines = ["# dmole report", "", f"Task sequence: {' → '.join(project.config.task_names)}.", ""]
    warnings = [(m, w) for m, values in result["methods"].items() for w in values["warnings"]]
    if warnings:
        lines += [
            "## Routing health",
            "",
            "These evaluations ran samples without their task's experts because the task's own router rejected them:",
            "",
        ]
        lines += [f"- **{method}**: {warning}" for method, warning in warnings] + [""]
    for module, data in found:
        lines += module.table(data)
    lines += _second_expert_table(result)
    lines += run_settings.table(result["run_settings"])
    return "\n".join(lines).rstrip() + "\n"


def _second_expert_table(result: dict) -> list[str]:
    rows = [(method, v["second_experts"]) for method, v in result["methods"].items() if "second_experts" in v]
    if not rows:
        return []
    return [
        "## Second experts",
        "",
        "Test samples routed to two experts after each method's last evaluated stage, and their mean "
        "score (every metric on one scale, CIDEr-D unbounded) beside the samples with one expert:",
        "",
        *md_table(
            ["method", "after", "samples", "two experts", "their mean score", "one expert", "their mean score"],
            [
                [m, d["after"], str(d["samples"]), str(d["two"]), fmt(d["mean_two"]), str(d["one"]), fmt(d["mean_one"])]
                for m, d in rows
            ],
        ),
        "",
    ]


def report(project: Project, *, force: bool = False) -> StageResult:
    """The continual matrices and metrics, and report.md with one PNG figure and one table per section."""
    result, used = collect(project)
    costs, trained = training_costs(project, list(result["methods"]))
    result["run_settings"] = run_settings.gather(used, trained)
    found, inputs = sections(project, result)
    for module, data in found:
        if module in (repeats, general):  # their numbers are results: `report --json` carries them
            result[module.RESULT_KEY] = data
    used += [v for v in inputs + trained if v not in used]

    def compute(writer: Writer) -> None:
        rows = [
            (method, t, task, value)
            for method, values in result["methods"].items()
            for t, row in enumerate(values["matrix"])
            for task, value in zip(result["tasks"], row)
        ]
        write_parquet(
            writer.path(REPORT.files.matrix),
            {
                "method": [r[0] for r in rows],
                "stage": [r[1] for r in rows],
                "task": [r[2] for r in rows],
                "score": [r[3] for r in rows],
            },
        )
        write_json(writer.path(REPORT.files.metrics), result)
        write_json(writer.path(REPORT.files.costs), costs)
        write_json(writer.path(REPORT.files.figures), {module.NAME: data for module, data in found})
        for module, data in found:
            module.plot(data, writer.path(module.NAME))
        writer.path(REPORT.files.markdown).write_text(markdown(project, found, result), encoding="utf-8")
        writer.meta.update({f"{m}.last": v["last"] for m, v in result["methods"].items()})
        writer.meta["warnings"] = list(dict.fromkeys(w for v in result["methods"].values() for w in v["warnings"]))

    config = {
        "methods": sorted(result["methods"]),
        "figures": [module.NAME for module, _ in found],
        "hypers": {method: values["hyper"] for method, values in result["methods"].items()},
        # a train-task computed again gives the same content, hence the same inputs, but its own time and memory:
        # without them here the report would stay up to date with the costs of a run that is no longer the latest
        "costs": costs,
    }
    return run_stage(project, REPORT.name, REPORT_TASK, config=config, inputs=used, compute=compute, force=force)


def figure_names(version: Version) -> list[str]:
    """The PNG figures of a report version, in the report's order."""
    return list(read_json(version.file(REPORT.files.figures)))


def export(version: Version, out: Path) -> None:
    """Copy report.md and its figures from the report ``version`` into the folder ``out``: all of them, or, if
    one cannot be written, none, so ``out`` never mixes two reports."""
    copy_all_or_none([(version.file(name), out / name) for name in [REPORT.files.markdown, *figure_names(version)]])
