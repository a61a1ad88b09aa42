"""The expert allocation over the task sequence: per tower, layers × tasks, which modules hold each task's
expert (the architecture's evolution). Read from the allocate stage (``dmole.stages.allocate.allocation_table``)."""

from __future__ import annotations

from pathlib import Path

from dmole.artifacts import Version

from ..allocate import allocation_table
from ..project import Project
from ..registry import ALLOCATE, ZC_SCORE
from .markdown import image
from .markdown import table as md_table
from .style import FONT, colorbar, heatmap, new_figure, save

NAME = "allocation.png"
KIND_ORDER = ("q", "k", "v", "qkv", "o", "mlp_gate", "mlp_up", "mlp_down")
SHORT = {"mlp_gate": "g", "mlp_up": "u", "mlp_down": "d"}  # attention kinds are short already
TOWER_TITLES = {"vision": "vision tower", "language": "language model"}


def _kind_key(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind)


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    """Per tower: the layers and, per layer and task, the module kinds holding that task's expert."""
    versions = [v for t in project.config.task_names if (v := project.store.latest(ALLOCATE.name, t))]
    if not versions:
        return None
    found = allocation_table(project)
    towers = [
        {
            "tower": tower,
            "layers": list(rows),
            "cells": [[sorted(cells[task], key=_kind_key) for task in found["tasks"]] for cells in rows.values()],
        }
        for tower, rows in found["towers"].items()
    ]
    kinds = sorted({k for t in towers for row in t["cells"] for cell in row for k in cell}, key=_kind_key)
    scores = project.store.require(ZC_SCORE.name, found["tasks"][-1])
    return {"tasks": found["tasks"], "kinds": kinds, "towers": towers}, [*versions, scores]


def cell_text(kinds: list[str]) -> str:
    """'qkvo gud': attention kinds, then MLP kinds, each group in one word; '·' when the task has none here."""
    attention = "".join(k for k in kinds if k not in SHORT)
    mlp = "".join(SHORT[k] for k in kinds if k in SHORT)
    return " ".join(part for part in (attention, mlp) if part) or "·"


def legend(kinds: list[str]) -> str:
    """What the cell letters mean, for the kinds present: 'q k v o: attention; g u d: MLP gate, up, down; · none'."""
    attention, mlp = [k for k in kinds if k not in SHORT], [k for k in kinds if k in SHORT]
    parts = [f"{' '.join(attention)}: attention"] if attention else []
    if mlp:
        parts.append(f"{' '.join(SHORT[k] for k in mlp)}: MLP {', '.join(k.removeprefix('mlp_') for k in mlp)}")
    return "; ".join([*parts, "· none"])


def table(data: dict) -> list[str]:
    lines = [
        "## Expert allocation",
        "",
        f"Which modules of each layer hold each task's expert, in training order ({legend(data['kinds'])}).",
        "",
        *image(NAME, "expert allocation per layer and task"),
    ]
    for tower in data["towers"]:
        rows = [
            [str(layer), *(cell_text(cell) for cell in cells)] for layer, cells in zip(tower["layers"], tower["cells"])
        ]
        totals = [str(sum(len(row[i]) for row in tower["cells"])) for i in range(len(data["tasks"]))]
        lines += [
            f"### {TOWER_TITLES.get(tower['tower'], tower['tower'])}",
            "",
            *md_table(["layer", *data["tasks"]], [*rows, ["modules", *totals]]),
            "",
        ]
    return lines


def plot(data: dict, path: Path) -> None:
    towers = data["towers"]
    figure = new_figure(1.0 + 2.9 * len(towers), 1.4 + 0.24 * max(len(t["layers"]) for t in towers))
    axes = figure.subplots(1, len(towers), squeeze=False)[0]
    most = max(1, len(data["kinds"]))
    for ax, tower in zip(axes, towers):
        cells = tower["cells"]
        image = heatmap(
            ax,
            [[len(cell) for cell in row] for row in cells],
            xlabels=data["tasks"],
            ylabels=[str(layer) for layer in tower["layers"]],
            cmap="Blues",
            vmin=0,
            vmax=most,
            label=lambda r, c, v, cells=cells: cell_text(cells[r][c]),
            lower_origin=True,
        )
        ax.set_title(TOWER_TITLES.get(tower["tower"], tower["tower"]), fontsize=FONT + 1)
        ax.set_xlabel("task (training order)", fontsize=FONT)
        ax.set_ylabel("layer", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
    colorbar(figure, image, list(axes), f"modules holding the task's expert (of {most})", ticks=range(most + 1))
    figure.suptitle(legend(data["kinds"]), fontsize=FONT)
    save(figure, path)
