"""RoE's layer skipping on the test sets: the skip rate of each language-model layer, how many layers each
example skipped, and which set of layers, per task. Read from ``routing_decisions.parquet`` of the latest
route-train weights (their roe-eval when there is one, else route-train's own closing evaluation); absent when
route-train was not run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dmole.artifacts import Version
from dmole.artifacts.io import read_json, read_parquet

from ..project import Project
from ..registry import ROE_EVAL, ROUTE_TRAIN
from ..roe.evaluation import TASK, evaluated_by
from .markdown import fmt, image
from .markdown import table as md_table
from .style import FONT, new_figure, save

NAME = "roe_skips.png"
COLUMNS = ["layer", "routable", "applied_skip", "benchmark", "example_id"]


def gather(project: Project) -> tuple[dict, list[Version]] | None:
    trained = project.store.latest(ROUTE_TRAIN.name, TASK)
    if trained is None:
        return None
    source = evaluated_by(project, trained)
    rows = read_parquet(source.file(ROE_EVAL.files.decisions)).select(COLUMNS).to_pylist()
    layers = sorted({r["layer"] for r in rows})
    routable = {r["layer"] for r in rows if r["routable"]}
    per_layer = [[r["applied_skip"] for r in rows if r["layer"] == layer] for layer in layers]
    pattern: dict[tuple[str, str], list[int]] = {}  # each example's skipped routable layers
    for r in rows:
        skipped = pattern.setdefault((r["benchmark"], r["example_id"]), [])
        if r["routable"] and r["applied_skip"]:
            skipped.append(r["layer"])
    counts = Counter(len(layers) for layers in pattern.values())
    applied = [r["applied_skip"] for r in rows if r["routable"]]
    rho = read_json(trained.file(ROUTE_TRAIN.files.config))["rho"]
    data = {
        "source": f"{source.stage} v{source.number}",
        "rho": rho,
        "layers": layers,
        "routable": [layer in routable for layer in layers],
        "skip_rate": [100.0 * sum(v) / len(v) for v in per_layer],
        "overall": 100.0 * sum(applied) / len(applied) if applied else 0.0,
        "skipped": list(range(len(routable) + 1)),
        "examples": [counts[k] for k in range(len(routable) + 1)],
        "patterns": skip_patterns(pattern),
    }
    return data, [trained] if source is trained else [trained, source]


def skip_patterns(pattern: dict[tuple[str, str], list[int]]) -> dict:
    """Which set of layers each example skipped, counted per task: the most common sets first."""
    tasks = list(dict.fromkeys(task for task, _ in pattern))
    per = Counter((", ".join(map(str, sorted(layers))) or "none", task) for (task, _), layers in pattern.items())
    totals = Counter(key for key, _ in per.elements())
    ordered = sorted(totals, key=lambda key: (-totals[key], key))
    return {"tasks": tasks, "rows": [[key, *(per[key, task] for task in tasks)] for key in ordered]}


def table(data: dict) -> list[str]:
    n = sum(data["examples"])
    mean = sum(k * c for k, c in zip(data["skipped"], data["examples"])) / n if n else 0.0
    return [
        "## RoE layer skipping",
        "",
        f"From {data['source']}: {fmt(data['overall'], '.1f')}% of the routable layers skipped "
        f"(target ρ = {100 * data['rho']:.0f}%), {mean:.2f} layers per example on average over {n} examples.",
        "",
        *image(NAME, "RoE skip rate per layer and skipped layers per example"),
        *md_table(
            ["layer", "routable", "skip rate (%)"],
            [
                [str(layer), "yes" if routable else "no (always executed)", fmt(rate, ".1f")]
                for layer, routable, rate in zip(data["layers"], data["routable"], data["skip_rate"])
            ],
        ),
        "",
        *md_table(
            ["layers skipped", "examples"], [[str(k), str(c)] for k, c in zip(data["skipped"], data["examples"])]
        ),
        "",
        "Which layers each example skipped, per task (examples; the same set for every example would be "
        "static layer dropping, not routing):",
        "",
        *md_table(
            ["skipped layers", *data["patterns"]["tasks"]],
            [[str(cell) for cell in row] for row in data["patterns"]["rows"]],
        ),
        "",
    ]


def plot(data: dict, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(7.2, 2.8)
    left, right = figure.subplots(1, 2, width_ratios=[max(len(data["layers"]), 4), max(len(data["skipped"]), 4)])
    colours = ["#4c72b0" if routable else "#bbbbbb" for routable in data["routable"]]
    bars = left.bar(data["layers"], data["skip_rate"], color=colours)
    left.bar_label(bars, fmt="%.0f", fontsize=FONT - 1)
    for layer, routable in zip(data["layers"], data["routable"]):
        if not routable:
            left.axvspan(layer - 0.5, layer + 0.5, color="#eeeeee", zorder=0, label="always executed")
    left.axhline(
        100 * data["rho"], color="#c44e52", linestyle="--", linewidth=1, label=f"target ρ = {100 * data['rho']:.0f}%"
    )
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    left.legend(unique.values(), unique.keys(), fontsize=FONT - 1, loc="upper center", ncols=2, frameon=False)
    left.set_xticks(data["layers"])
    left.set_ylim(0, 122)  # room for the legend above the 100% bars
    left.set_yticks(range(0, 101, 20))
    left.set_title(f"skip rate per layer ({data['source']})", fontsize=FONT + 1)
    left.set_xlabel("language-model layer", fontsize=FONT)
    left.set_ylabel("examples skipping the layer (%)", fontsize=FONT)
    bars = right.bar(data["skipped"], data["examples"], color="#55a868")
    right.bar_label(bars, fontsize=FONT - 1)
    right.set_xticks(data["skipped"])
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_title("skipped layers per example", fontsize=FONT + 1)
    right.set_xlabel("layers skipped", fontsize=FONT)
    right.set_ylabel("examples", fontsize=FONT)
    for ax in (left, right):
        ax.tick_params(labelsize=FONT - 1)
        ax.spines[["top", "right"]].set_visible(False)
    save(figure, path)
