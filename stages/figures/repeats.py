"""Seeds and orders: every `dmole repeat` artifact of the workspace, one per method, with each continual metric and
each task's final score as mean ± standard deviation over the runs (every seed under every task order), and each
run's own values beside them. The plot draws each task's final score, mean and standard deviation, per method.
Absent when no repeat was run."""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_json

from ..methods import REGISTRY
from ..project import Project
from ..registry import REPEAT
from .markdown import fmt, image
from .markdown import table as md_table
from .matrix import METRICS
from .style import FONT, new_figure, save

NAME = "repeats.png"
RESULT_KEY = "seeds_and_orders"  # where `report --json` (cl_metrics.json) carries the section's data
FIELD_LABELS = {
    "mcitlib.mft": "MCITlib MFT",
    "mcitlib.mfn": "MCITlib MFN (= Last)",
    "mcitlib.maa": "MCITlib MAA (= AVG seen)",
    "mcitlib.bwt": "MCITlib BWT (= BWT)",
    "coinpp.average_forgetting": "CoIN++ average forgetting",
    "continual_next.avg_acc": "Continual-NExT Avg.ACC (= Last)",
    "continual_next.forgetting": "Continual-NExT Forgetting",
    "continual_next.new_acc": "Continual-NExT New.ACC (= MFT)",
}
LABELS = {**dict(METRICS), **FIELD_LABELS}


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    versions = [v for v in (project.store.latest(REPEAT.name, name) for name in REGISTRY) if v is not None]
    if not versions:
        return None
    repeats = []
    for version in versions:
        repeated = read_json(version.file(REPEAT.files.result))
        repeats.append(
            {
                "method": repeated["method"],
                "source": f"{REPEAT.name} {version.task} v{version.number}",
                "tasks": repeated["tasks"],
                "std": repeated["std"],
                "metrics": repeated["metrics"],
                "final": repeated["final"],
                "runs": [
                    {k: run[k] for k in ("seed", "order", "tasks", "matrix", "metrics", "final", "trained")}
                    for run in repeated["runs"]
                ],
            }
        )
    return {"repeats": repeats}, versions


def mean_std(value: dict) -> str:
    """``mean ± std``; the mean alone for a single run, n/a where a run lacks the value."""
    if value["mean"] is None:
        return "n/a"
    return fmt(value["mean"]) if value["std"] is None else f"{fmt(value['mean'])} ± {fmt(value['std'])}"


def _run_label(run: dict) -> str:
    return f"seed {run['seed']}, {run['order']}"


def table(data: dict) -> list[str]:
    sources = ", ".join(r["source"] for r in data["repeats"])
    lines = [
        "## Seeds and orders",
        "",
        f"From {sources}: each method's whole sequence under every seed and task order. Each run's metrics are "
        "computed over its tasks in its own order; the final scores are matched by task name. ± is the sample "
        "standard deviation over the runs (ddof = 1), left out for a single run. MCITlib's MFN and Continual-NExT's "
        "Avg.ACC equal Last, MAA equals AVG (seen), MCITlib's BWT equals BWT, New.ACC equals MFT (docs/metrics.md).",
        "",
        *image(NAME, "each task's final score, mean and standard deviation over the runs, per method"),
    ]
    for repeated in data["repeats"]:
        runs = repeated["runs"]
        seeds = ", ".join(dict.fromkeys(str(r["seed"]) for r in runs))
        orders = "; ".join(dict.fromkeys(f"{r['order']} ({' → '.join(r['tasks'])})" for r in runs))
        header = [_run_label(r) for r in runs]
        lines += [
            f"### {repeated['method']}: {len(runs)} run{'s' if len(runs) > 1 else ''}",
            "",
            f"Seeds {seeds}; orders {orders}.",
            "",
            *md_table(
                ["metric", "mean ± std", *header],
                [
                    [label, mean_std(repeated["metrics"][key]), *(fmt(r["metrics"][key]) for r in runs)]
                    for key, label in LABELS.items()
                ],
            ),
            "",
            *md_table(
                ["final score", "mean ± std", *header],
                [
                    [task, mean_std(repeated["final"][task]), *(fmt(r["final"][task]) for r in runs)]
                    for task in repeated["tasks"]
                ],
            ),
            "",
        ]
    return lines


def plot(data: dict, path: Path) -> None:
    tasks = data["repeats"][0]["tasks"]
    count = len(data["repeats"])
    figure = new_figure(max(5.0, 2.4 + 0.5 * len(tasks) * count), 3.0)
    ax = figure.subplots()
    colours = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
    width = 0.8 / count
    for i, repeated in enumerate(data["repeats"]):
        values = [repeated["final"].get(t, {"mean": None, "std": None}) for t in tasks]
        xs = [x + (i - (count - 1) / 2) * width for x in range(len(tasks))]
        ax.bar(
            xs,
            [v["mean"] or 0.0 for v in values],
            width,
            yerr=[v["std"] or 0.0 for v in values],
            capsize=2,
            color=colours[i % len(colours)],
            label=f"{repeated['method']} ({len(repeated['runs'])} runs)",
        )
    ax.set_xticks(range(len(tasks)), labels=tasks, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_ylabel("final score (mean ± std)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1, frameon=False)
    ax.tick_params(labelsize=FONT - 1)
    ax.spines[["top", "right"]].set_visible(False)
    figure.suptitle("seeds and orders: final score per task over the runs", fontsize=FONT + 1)
    save(figure, path)
