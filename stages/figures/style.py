"""What every figure shares: an Agg figure without pyplot's global state, annotated heatmaps, saving."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

DPI = 110
FONT = 8  # points; legible at the ~800 px the README shows a figure at
MAX_ANNOTATED_CELLS = 160  # above this, cell labels would be unreadable: the colour bar alone carries the value


def new_figure(width: float, height: float):
    """A constrained-layout Figure drawn by Agg (no display, no pyplot, nothing global)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def heatmap(
    ax,
    values: Sequence[Sequence[float | None]],
    *,
    xlabels: Sequence[str],
    ylabels: Sequence[str],
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    label: Callable[[int, int, float], str] | None = None,
    lower_origin: bool = False,
):
    """Draw ``values`` (rows × columns, None shown as a grey cell) with ticks and, when ``label`` is given and
    the grid is small enough, each cell's text ``label(row, column, value)`` in a colour that contrasts with
    the cell. Returns the image."""
    import matplotlib
    import numpy as np

    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=colours,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        origin="lower" if lower_origin else "upper",
        interpolation="nearest",
    )
    ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(ylabels)), labels=ylabels)
    ax.tick_params(length=0)
    if label is not None and grid.size <= MAX_ANNOTATED_CELLS:
        for (r, c), value in np.ndenumerate(grid):
            if np.isnan(value):
                ax.text(c, r, "n/a", ha="center", va="center", fontsize=FONT - 1, color="#555555")
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            bright = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            ax.text(
                c,
                r,
                label(r, c, value),
                ha="center",
                va="center",
                fontsize=FONT - 1,
                color="black" if bright else "white",
            )
    return image


def compact(value: float) -> str:
    """A cell label of at most four characters or so: 350, 24, 7.4, 0.13, 0.0042."""
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 10 else f"{value:.1f}" if magnitude >= 1 else f"{value:.2g}"


def colorbar(figure, image, axes, label: str, ticks: Sequence[float] | None = None, extend: str = "neither") -> None:
    bar = figure.colorbar(image, ax=axes, shrink=0.9, pad=0.02, ticks=ticks, extend=extend)
    bar.set_label(label, fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT - 1)


def save(figure, path: Path) -> None:
    """Write a PNG with no timestamp in its metadata, so the same data gives the same file."""
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
