"""D-MoLE's threshold sensitivity: Avg Last (the mean score over every task after the sweep's stage) per
factor on every router threshold, applied at evaluation only, as the authors' rebuttal table does. Read from
the latest ``threshold-sweep``; absent when no sweep was run."""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_parquet

from ..project import Project
from ..registry import THRESHOLD_SWEEP
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, new_figure, save

NAME = "thresholds.png"


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    latest = (project.store.latest(THRESHOLD_SWEEP.name, t) for t in project.config.task_names)
    found = [v for v in latest if v is not None]
    if not found:
        return None
    version = max(found, key=lambda v: project.config.task_index(v.task))  # the latest stage swept
    rows = read_parquet(version.file(THRESHOLD_SWEEP.files.table)).to_pylist()
    scales = sorted({r["scale"] for r in rows})
    at = {(r["scale"], r["task"]): r for r in rows}
    tasks = [t for t in project.config.task_names if (scales[0], t) in at]
    data = {
        "after": version.task,
        "scales": scales,
        "tasks": tasks,
        "avg_last": [sum(at[s, t]["score"] for t in tasks) / len(tasks) for s in scales],
        "scores": [[at[s, t]["score"] for t in tasks] for s in scales],
        "two_experts": [sum(at[s, t]["experts_2"] for t in tasks) for s in scales],
        "no_expert": [sum(at[s, t]["experts_0"] for t in tasks) for s in scales],
        "samples": sum(at[scales[0], t]["n"] for t in tasks),
    }
    return data, [version]


def table(data: dict) -> list[str]:
    return [
        "## Threshold sensitivity (D-MoLE)",
        "",
        f"After {data['after']}, every router threshold multiplied by each factor at evaluation only; "
        f"Avg Last is the mean over the {len(data['tasks'])} tasks ({data['samples']} test samples).",
        "",
        *image(NAME, "Avg Last per threshold scaling factor"),
        *md_table(
            ["factor", "Avg Last", "samples with two experts", "samples with no expert", *data["tasks"]],
            [
                [f"{s:g}", fmt(avg), str(two), str(none), *(fmt(v) for v in scores)]
                for s, avg, two, none, scores in zip(
                    data["scales"], data["avg_last"], data["two_experts"], data["no_expert"], data["scores"]
                )
            ],
        ),
        "",
    ]


def plot(data: dict, path: Path) -> None:
    figure = new_figure(4.2, 2.6)
    ax = figure.subplots()
    ax.plot(data["scales"], data["avg_last"], marker="o", color="#4c72b0")
    for scale, value in zip(data["scales"], data["avg_last"]):
        ax.annotate(
            f"{value:.2f}", (scale, value), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=FONT - 1
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(data["scales"], labels=[f"{s:g}" for s in data["scales"]])
    ax.set_title(f"threshold sensitivity after {data['after']}", fontsize=FONT + 1)
    ax.set_xlabel("threshold scaling factor", fontsize=FONT)
    ax.set_ylabel("Avg Last", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.spines[["top", "right"]].set_visible(False)
    save(figure, path)
