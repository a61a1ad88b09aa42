"""Expert activation under D-MoLE's routing, from the evaluations' per-sample routes (``routed_tasks``).

After the latest evaluated stage: for each evaluated task, the share of its test samples routed to each task's
experts (a sample can use two, so a row can exceed 100%) or to none (the base model). Per earlier stage: the
share of the not-yet-seen tasks' test samples that every router rejected (the wanted outcome).
"""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_parquet

from ..project import Project
from ..registry import EVAL
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, colorbar, heatmap, new_figure, save

NAME = "activation.png"


def routes(version: Version, task: str) -> list[list[int]]:
    return read_parquet(version.file(EVAL.files.predictions.format(task=task))).column("routed_tasks").to_pylist()


def percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    names = project.config.task_names
    evaluated = [(t, name, v) for t, name in enumerate(names, start=1) if (v := project.store.latest(EVAL.name, name))]
    if not evaluated:
        return None
    stage, after, last = evaluated[-1]
    share, none, samples = [], [], []
    for task in names:
        routed = routes(last, task)
        share.append([percent(sum(k in r for r in routed), len(routed)) for k in range(1, stage + 1)])
        none.append(percent(sum(not r for r in routed), len(routed)))
        samples.append(len(routed))
    rejection = []
    for t, name, version in evaluated:
        unseen = [r for task in names[t:] for r in routes(version, task)]
        if unseen:
            rejection.append(
                {
                    "stage": t,
                    "after": name,
                    "unseen": len(unseen),
                    "rejected": percent(sum(not r for r in unseen), len(unseen)),
                }
            )
    data = {
        "stage": stage,
        "after": after,
        "tasks": names,
        "experts": names[:stage],
        "share": share,
        "none": none,
        "samples": samples,
        "rejection": rejection,
    }
    return data, [v for _, _, v in evaluated]


def table(data: dict) -> list[str]:
    rows = [
        [task, *(fmt(v, ".1f") for v in shares), fmt(none, ".1f"), str(n)]
        for task, shares, none, n in zip(data["tasks"], data["share"], data["none"], data["samples"])
    ]
    lines = [
        "## Expert activation (D-MoLE routing)",
        "",
        f"After stage {data['stage']} ({data['after']}): the share (%) of each task's test samples routed to "
        "each task's experts, or to none (the base model). A sample can use two experts, so a row can sum "
        "to more than 100.",
        "",
        *image(NAME, "expert activation and rejection of unseen tasks"),
        *md_table(["evaluated task", *data["experts"], "none", "samples"], rows),
        "",
    ]
    if data["rejection"]:
        lines += [
            "### Rejection of unseen tasks",
            "",
            "Share (%) of the test samples of tasks not trained yet that every router rejected.",
            "",
            *md_table(
                ["after stage", "unseen samples", "rejected (%)"],
                [
                    [f"{r['stage']} {r['after']}", str(r["unseen"]), fmt(r["rejected"], ".1f")]
                    for r in data["rejection"]
                ],
            ),
            "",
        ]
    return lines


def plot(data: dict, path: Path) -> None:
    tasks, rejection = data["tasks"], data["rejection"]
    columns = [*data["experts"], "none"]
    figure = new_figure(
        2.4 + 0.55 * len(columns) + (0.4 + 0.45 * len(rejection) if rejection else 0), 1.8 + 0.3 * len(tasks)
    )
    if rejection:
        left, right = figure.subplots(1, 2, width_ratios=[len(columns) + 1, 0.6 * len(rejection) + 1])
    else:
        left, right = figure.subplots(1, 1), None
    values = [[*shares, none] for shares, none in zip(data["share"], data["none"])]
    image = heatmap(
        left, values, xlabels=columns, ylabels=tasks, cmap="cividis", vmin=0, vmax=100, label=lambda r, c, v: f"{v:.0f}"
    )
    left.set_title(f"routing after stage {data['stage']} ({data['after']})", fontsize=FONT + 1)
    left.set_xlabel("task whose expert is used", fontsize=FONT)
    left.set_ylabel("evaluated task (test samples)", fontsize=FONT)
    left.tick_params(labelsize=FONT - 1)
    colorbar(figure, image, left, "test samples routed (%)")
    if right is not None:
        labels = [f"{r['stage']} {r['after']}" for r in rejection]
        bars = right.bar(range(len(rejection)), [r["rejected"] for r in rejection], color="#4c72b0")
        right.bar_label(bars, fmt="%.0f", fontsize=FONT - 1)
        right.set_xticks(range(len(labels)), labels=labels, rotation=35, ha="right", rotation_mode="anchor")
        right.set_ylim(0, 105)
        right.set_title("unseen tasks rejected", fontsize=FONT + 1)
        right.set_xlabel("after stage", fontsize=FONT)
        right.set_ylabel("unseen test samples rejected (%)", fontsize=FONT)
        right.tick_params(labelsize=FONT - 1)
    save(figure, path)
