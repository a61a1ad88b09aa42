"""Small markdown tables, so that every figure also reads in a terminal."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub table; the first column is left-aligned (labels), the others right-aligned (values)."""
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def image(name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""]
