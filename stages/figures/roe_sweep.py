"""RoE's skip-ratio sweep against its baselines: per target ρ and variant (RoE, static dropping, random routing),
the realised skip, each task's score relative to the dense model, their mean (over seeds, with the spread), and
the batch-1 speed-up; the plot draws mean relative score against realised skip and against speed-up. Read from the
latest ``roe-sweep`` artifact; absent when `dmole route-sweep` was not run."""

from __future__ import annotations

import textwrap
from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_json

from ..project import Project
from ..registry import ROE_SWEEP
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, new_figure, save

NAME = "roe_sweep.png"
TASK = "all"
LABELS = {"roe": "RoE (learned)", "static": "static dropping", "random": "random routing"}
COLOURS = {"roe": "#4c72b0", "static": "#dd8452", "random": "#8c8c8c"}


def from_result(result: dict, source: str) -> dict:
    """The figure's data from a sweep.json's content."""
    summary = result["summary"]
    tasks = list(summary[0]["relative"]) if summary else []
    return {
        "source": source,
        "dense_reference": result["dense_reference"],
        "tasks": tasks,
        "seeds": result["options"]["seeds"],
        "rows": summary,
    }


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    version = project.store.latest(ROE_SWEEP.name, TASK)
    if version is None:
        return None
    result = read_json(version.file(ROE_SWEEP.files.result))
    return from_result(result, f"{ROE_SWEEP.name} v{version.number}"), [version]


def _pct(value: float | None) -> str:
    return fmt(None if value is None else 100 * value, ".1f")


def table(data: dict) -> list[str]:
    header = ["ρ", "variant", "skip (%)", "mean relative", "seed spread", *data["tasks"], "speed-up"]
    rows = [
        [
            f"{row['target']:g}",
            LABELS[row["variant"]],
            _pct(row["skip_rate"]),
            fmt(row["mean_relative"], ".3f"),
            fmt(row["spread"], ".3f"),
            *(fmt(row["relative"][t], ".3f") for t in data["tasks"]),
            "n/a" if row["speedup"] is None else f"{row['speedup']:.3f}×",
        ]
        for row in data["rows"]
    ]
    seeds = ", ".join(map(str, data["seeds"]))
    return [
        "## RoE skip-ratio sweep",
        "",
        f"From {data['source']}: scores relative to the {data['dense_reference']} (1 = no loss), per task and "
        f"their mean, averaged over seeds {seeds} (spread: max − min of the mean over seeds); skip over the "
        "routable layers; baselines at RoE's realised skip.",
        "",
        *image(NAME, "mean relative score against realised skip and batch-1 speed-up"),
        *md_table(header, rows),
        "",
    ]


def plot(data: dict, path: Path) -> None:
    figure = new_figure(7.2, 2.8)
    axes = figure.subplots(1, 2, sharey=True)
    for variant, label in LABELS.items():
        rows = [r for r in data["rows"] if r["variant"] == variant and r["mean_relative"] is not None]
        for ax, key, scale in ((axes[0], "skip_rate", 100.0), (axes[1], "speedup", 1.0)):
            points = [
                (
                    r[key] * scale,
                    r["mean_relative"],
                    r["mean_relative"] - r["min_relative"],
                    r["max_relative"] - r["mean_relative"],
                )
                for r in rows
                if r[key] is not None
            ]
            if points:
                xs, ys, below, above = zip(*points)
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[below, above],
                    marker="o",
                    markersize=4,
                    capsize=2,
                    linewidth=1.2,
                    color=COLOURS[variant],
                    label=label,
                )
    axes[0].set_xlabel("realised skip, routable layers (%)", fontsize=FONT)
    axes[1].set_xlabel("batch-1 speed-up (×)", fontsize=FONT)
    # a long reference ("dense twin, warm start") would run past the figure's top edge
    axes[0].set_ylabel(textwrap.fill(f"mean score relative to the {data['dense_reference']}", 40), fontsize=FONT)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=FONT - 1, frameon=False)
    else:  # the table says n/a in every row; the empty axes say why
        for ax in axes:
            ax.text(
                0.5,
                0.5,
                f"no relative score:\nthe {data['dense_reference']}\nscored 0 on every task",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=FONT - 1,
                color="#666666",
            )
    for ax in axes:
        ax.axhline(1.0, color="#bbbbbb", linewidth=0.8, zorder=0)
        ax.tick_params(labelsize=FONT - 1)
        ax.spines[["top", "right"]].set_visible(False)
    figure.suptitle(f"accuracy against skip and speed ({data['source']})", fontsize=FONT + 1)
    save(figure, path)
