"""Scores under other rules: per evaluation that ``dmole rescore`` scored again, each task's score under the
evaluation's own grader beside its score under each rule re-scored (docs/metrics.md). Read from the latest
``rescore`` version of each method and stage (zero-shot included) and the evaluation it read; absent when there is
none, so that report.md is unchanged where rescore never ran."""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_parquet

from ..methods import REGISTRY
from ..methods.base import ZERO_SHOT
from ..project import Project
from ..registry import EVAL, RESCORE
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, colorbar, compact, heatmap, new_figure, save

NAME = "rescores.png"


def _rescores(project: Project) -> list[tuple[str, Version]]:
    """(method, its latest rescore after a stage) for the zero-shot evaluation and each method's stages."""
    wanted = [("zero-shot", RESCORE.name, ZERO_SHOT)] + [
        (method.name, method.stage(RESCORE.name), after)
        for method in REGISTRY.values()
        for after in method.stages_after(project)
    ]
    found = [(method, project.store.latest(stage, after)) for method, stage, after in wanted]
    return [(method, version) for method, version in found if version is not None]


def _evaluation(project: Project, version: Version) -> Version:
    """The evaluation a rescore version read (its one input)."""
    (ref,) = version.manifest["inputs"]
    return project.store.version(ref["stage"], ref["task"], ref["version"])


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    found = _rescores(project)
    if not found:
        return None
    panels, used = [], []
    for method, version in found:
        evaluation = _evaluation(project, version)
        own = {r["task"]: r for r in read_parquet(evaluation.file(EVAL.files.scores)).to_pylist()}
        rows = read_parquet(version.file(RESCORE.files.scores)).to_pylist()
        names = list(dict.fromkeys(r["name"] for r in rows))
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        at = {(r["task"], r["name"]): r for r in rows}
        panels.append(
            {
                "method": method,
                "after": version.task,
                "evaluation": str(evaluation),
                "grader": evaluation.manifest.get("summary", {}).get("grader", "dmole"),
                "names": names,
                "tasks": tasks,
                "eval": [own[t]["score"] for t in tasks],
                "scores": [[at[t, n]["score"] for n in names] for t in tasks],
                "rules": [[at[t, n]["rule"] or "n/a" for n in names] for t in tasks],
            }
        )
        used += [version, evaluation]
    return {"panels": panels}, used


def table(data: dict) -> list[str]:
    lines = [
        "## Scores under other rules",
        "",
        "Each evaluation's stored replies scored again (`dmole rescore`), nothing generated: the score under the "
        "evaluation's own grader, then under each rule (n/a where a rule does not grade the task).",
        "",
        *image(NAME, "Each task's score under each rule"),
    ]
    for panel in data["panels"]:
        lines += [
            f"### {panel['method']} after {panel['after']}",
            "",
            f"{panel['evaluation']}, graded by {panel['grader']}.",
            "",
            *md_table(
                ["task", f"eval ({panel['grader']})", *panel["names"]],
                [
                    [task, fmt(own), *(fmt(v) for v in scores)]
                    for task, own, scores in zip(panel["tasks"], panel["eval"], panel["scores"])
                ],
            ),
            "",
        ]
    return lines


def plot(data: dict, path: Path) -> None:
    panels = data["panels"]
    width = max(3.2, 0.75 * (1 + max(len(p["names"]) for p in panels)) + 1.6)
    figure = new_figure(width, 0.35 * sum(len(p["tasks"]) for p in panels) + 0.9 * len(panels))
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        shown = heatmap(
            ax,
            [[own, *scores] for own, scores in zip(panel["eval"], panel["scores"])],
            xlabels=[f"eval ({panel['grader']})", *panel["names"]],
            ylabels=panel["tasks"],
            vmin=0,
            vmax=100,
            label=lambda _r, _c, value: compact(value),
        )
        ax.set_title(f"{panel['method']} after {panel['after']}", fontsize=FONT + 1)
    colorbar(figure, shown, list(axes), "score (0-100; CIDEr-D may exceed it)", extend="max")
    save(figure, path)
