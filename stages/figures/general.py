"""General ability, base against final: every `dmole general` artifact of the workspace (the base model and a
method's model after a task, scored on general lmms-eval benchmarks), each task's metrics side by side with the
change and the change relative to the base (the metrics' scales differ: MME's scores run to 2000, POPE's to 1).
The plot draws the relative change per metric. Absent when no general artifact exists, so that report.md is
unchanged where `dmole general` never ran."""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_json

from ..methods import REGISTRY
from ..project import Project
from ..registry import GENERAL
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, new_figure, save

NAME = "general.png"
RESULT_KEY = "general_ability"  # where `report --json` (cl_metrics.json) carries the section's data


def _label(key: str) -> str:
    """lmms-eval's ``metric,filter`` key as a label: the metric alone under the default filter ``none``."""
    metric, _, kind = key.partition(",")
    return metric if kind in ("", "none") else f"{metric} ({kind})"


def relative(base: float | None, final: float | None) -> float | None:
    """(final − base) / |base| in percent; None where the base is 0 or a value is missing."""
    if base is None or final is None or base == 0:
        return None
    return 100.0 * (final - base) / abs(base)


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    found = [
        version
        for method in REGISTRY.values()
        for after in method.stages_after(project)
        if (version := project.store.latest(method.stage(GENERAL.name), after)) is not None
    ]
    if not found:
        return None
    return {"comparisons": [comparison(version) for version in found]}, found


def comparison(version: Version) -> dict:
    """One general artifact's base and final scores, metric by metric, with the change."""
    saved = read_json(version.file(GENERAL.files.result))
    base, final = saved["models"]["base"]["results"], saved["models"]["final"]["results"]
    rows = []
    for task in final:
        for key, value in final[task].items():
            before = base.get(task, {}).get(key)
            rows.append(
                {
                    "task": task,
                    "metric": _label(key),
                    "higher_is_better": saved["higher_is_better"].get(task, {}).get(key.partition(",")[0]),
                    "base": before,
                    "final": value,
                    "change": None if before is None else value - before,
                    "relative": relative(before, value),
                }
            )
    return {
        "method": saved["method"],
        "after": saved["after"],
        "source": f"{version.stage} {version.task} v{version.number}",
        "lmms_eval": saved["lmms_eval"],
        "limit": saved["limit"],
        "samples": saved["models"]["final"]["samples"],
        "rows": rows,
    }


def _direction(higher: bool | None) -> str:
    return "↑" if higher else "↓" if higher is False else ""


def table(data: dict) -> list[str]:
    lines = [
        "## General ability: base against final",
        "",
        "The base model and a method's model after the task named, scored on general benchmarks through the "
        "lmms-eval plugin (`dmole general`): lmms-eval's own prompts, generation limits and metrics, so these are "
        "lmms-eval's scores. Change is final − base; relative is that change over the base, in percent (↑: higher "
        "is better, ↓: lower).",
        "",
        *image(NAME, "each metric's change from the base model to the final model, relative to the base"),
    ]
    for comparison in data["comparisons"]:
        scope = (
            f"the first {comparison['limit']} documents of each task"
            if comparison["limit"]
            else "every document of each task"
        )
        samples = ", ".join(f"{task} {n}" for task, n in comparison["samples"].items())
        lines += [
            f"### {comparison['method']} after {comparison['after']}",
            "",
            f"From {comparison['source']}, lmms-eval {comparison['lmms_eval']}, {scope} ({samples}).",
            "",
            *md_table(
                ["task", "metric", "base", "final", "change", "relative %"],
                [
                    [
                        r["task"],
                        f"{r['metric']} {_direction(r['higher_is_better'])}".rstrip(),
                        fmt(r["base"], ".4g"),
                        fmt(r["final"], ".4g"),
                        fmt(r["change"], "+.4g"),
                        fmt(r["relative"], "+.1f"),
                    ]
                    for r in comparison["rows"]
                ],
            ),
            "",
        ]
    return lines


def plot(data: dict, path: Path) -> None:
    comparisons = data["comparisons"]
    height = 0.9 + sum(0.28 * len(c["rows"]) + 0.5 for c in comparisons)
    figure = new_figure(5.2, height)
    axes = figure.subplots(len(comparisons), 1, squeeze=False)[:, 0]
    for ax, comparison in zip(axes, comparisons):
        rows = comparison["rows"]
        values = [r["relative"] or 0.0 for r in rows]
        ax.barh(
            range(len(rows)),
            values,
            color=[
                "#55a868" if (v >= 0) == (r["higher_is_better"] is not False) else "#c44e52"
                for v, r in zip(values, rows)
            ],
        )
        ax.axvline(0, color="#555555", linewidth=0.8)
        ax.set_yticks(range(len(rows)), labels=[f"{r['task']}: {r['metric']}" for r in rows])
        ax.invert_yaxis()
        ax.tick_params(labelsize=FONT - 1)
        ax.set_xlabel("final against base, % of the base", fontsize=FONT)
        ax.set_title(f"{comparison['method']} after {comparison['after']}", fontsize=FONT + 1)
        ax.spines[["top", "right"]].set_visible(False)
    save(figure, path)
