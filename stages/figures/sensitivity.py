"""The sensitivity map: each task's zero-cost score per layer and tower (the sum of the gradient-norm scores of
the layer's candidate modules), from the zc-score stage. The allocation gives experts to the highest cells."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_parquet

from ..project import Project
from ..registry import ZC_SCORE
from .allocation import TOWER_TITLES
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, colorbar, compact, heatmap, new_figure, save

NAME = "sensitivity.png"


def layer_scores(version: Version) -> dict[str, dict[int, float]]:
    """tower -> layer -> summed module score."""
    summed: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for row in read_parquet(version.file(ZC_SCORE.files.scores)).select(["tower", "layer", "score"]).to_pylist():
        summed[row["tower"]][row["layer"]] += row["score"]
    return summed


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    found = [(t, v) for t in project.config.task_names if (v := project.store.latest(ZC_SCORE.name, t))]
    if not found:
        return None
    per_task = [layer_scores(v) for _, v in found]
    names = sorted({tower for scores in per_task for tower in scores}, key=lambda tower: tower != "vision")
    towers = []
    for tower in names:
        layers = sorted({layer for scores in per_task for layer in scores.get(tower, {})})
        towers.append(
            {
                "tower": tower,
                "layers": layers,
                "scores": [[scores.get(tower, {}).get(layer) for scores in per_task] for layer in layers],
            }
        )
    return {"tasks": [t for t, _ in found], "towers": towers}, [v for _, v in found]


def table(data: dict) -> list[str]:
    lines = [
        "## Zero-cost sensitivity",
        "",
        "Each task's zero-cost score per layer: the summed gradient norms of the layer's candidate modules "
        "on the frozen base model.",
        "",
        *image(NAME, "zero-cost scores per layer, tower and task"),
    ]
    for tower in data["towers"]:
        lines += [
            f"### {TOWER_TITLES.get(tower['tower'], tower['tower'])}",
            "",
            *md_table(
                ["layer", *data["tasks"]],
                [[str(layer), *(fmt(v, ".4g") for v in row)] for layer, row in zip(tower["layers"], tower["scores"])],
            ),
            "",
        ]
    return lines


def plot(data: dict, path: Path) -> None:
    towers = data["towers"]
    figure = new_figure(0.5 + 3.6 * len(towers), 1.4 + 0.24 * max(len(t["layers"]) for t in towers))
    axes = figure.subplots(1, len(towers), squeeze=False)[0]
    for ax, tower in zip(axes, towers):
        image = heatmap(
            ax,
            tower["scores"],
            xlabels=data["tasks"],
            ylabels=[str(l) for l in tower["layers"]],
            cmap="YlOrRd",
            vmin=0,
            label=lambda r, c, v: compact(v),
            lower_origin=True,
        )
        ax.set_title(TOWER_TITLES.get(tower["tower"], tower["tower"]), fontsize=FONT + 1)
        ax.set_xlabel("task", fontsize=FONT)
        ax.set_ylabel("layer", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
        colorbar(figure, image, ax, "zero-cost score (layer sum)")
    save(figure, path)
