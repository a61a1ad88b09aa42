"""The baselines at their best strength: every `dmole sweep` artifact of the workspace, one per method, with each
grid value's test Last, AVG and BWT, its relative validation score, and the value selected on validation data.
The table's selected rows are Table 2 under the papers' protocol (a regularised baseline at its best strength);
the plot draws each value's test Last against its BWT, the stability-plasticity trade-off a strength buys.
Absent when no sweep was run."""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_json

from ..methods import REGISTRY
from ..project import Project
from ..registry import SWEEP
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, new_figure, save

NAME = "sweeps.png"


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    versions = [v for v in (project.store.latest(SWEEP.name, name) for name in REGISTRY) if v is not None]
    if not versions:
        return None
    sweeps = []
    for version in versions:
        swept = read_json(version.file(SWEEP.files.result))
        sweeps.append(
            {
                "method": swept["method"],
                "parameter": swept["parameter"],
                "selected": swept["selected"],
                "source": f"{SWEEP.name} {version.task} v{version.number}",
                "tasks": swept["tasks"],
                "points": [
                    {
                        "value": p["value"],
                        "validation_relative": p["validation"]["relative"],
                        **{k: p["test"][k] for k in ("last", "avg_seen", "bwt", "last_row")},
                    }
                    for p in swept["points"]
                ],
            }
        )
    return {"sweeps": sweeps}, versions


def table(data: dict) -> list[str]:
    tasks = data["sweeps"][0]["tasks"]
    rows = [
        [
            s["method"],
            f"{s['parameter']}={p['value']}",
            "✓" if p["value"] == s["selected"] else "",
            fmt(p["validation_relative"], ".3f"),
            *(fmt(p["last_row"][t]) for t in tasks),
            fmt(p["avg_seen"]),
            fmt(p["last"]),
            fmt(p["bwt"]),
        ]
        for s in data["sweeps"]
        for p in s["points"]
    ]
    sources = ", ".join(s["source"] for s in data["sweeps"])
    return [
        "## Baselines at their best strength (strength sweeps)",
        "",
        f"From {sources}: each method's whole sequence at every value of its strength, on the test sets after "
        "the last task; ✓ marks the value selected on the validation sets (best mean score relative to the "
        "grid's best per task), never on the test sets. The ✓ rows are Table 2 at each baseline's best "
        "strength; the Table 2 above runs each method at the workspace's hyperparameters.",
        "",
        *image(NAME, "test Last against BWT at every swept strength, the selected value ringed"),
        *md_table(["method", "value", "selected", "validation relative", *tasks, "AVG", "Last", "BWT"], rows),
        "",
    ]


def plot(data: dict, path: Path) -> None:
    figure = new_figure(5.6, 3.2)
    ax = figure.subplots()
    colours = iter(("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"))
    for swept in data["sweeps"]:
        colour = next(colours)
        xs, ys = [p["bwt"] for p in swept["points"]], [p["last"] for p in swept["points"]]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.0, color=colour, label=swept["method"])
        for p, x, y in zip(swept["points"], xs, ys):
            ax.annotate(
                f"{p['value']:g}" if isinstance(p["value"], float) else str(p["value"]),
                (x, y),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=FONT - 2,
                color=colour,
            )
            if p["value"] == swept["selected"]:
                ax.plot([x], [y], marker="o", markersize=9, fillstyle="none", color=colour)
    ax.set_xlabel("test BWT (0 = no forgetting)", fontsize=FONT)
    ax.set_ylabel("test Last (mean over tasks)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1, frameon=False)
    ax.tick_params(labelsize=FONT - 1)
    ax.spines[["top", "right"]].set_visible(False)
    figure.suptitle(
        "strength sweeps: each value's Last against its BWT (ring: selected on validation)", fontsize=FONT + 1
    )
    save(figure, path)
