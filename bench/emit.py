"""The benchmarks' one way to hand back results: printed as JSON, and written to ``--json`` when given."""

from __future__ import annotations

import json
from pathlib import Path


def emit(results: dict, path: Path | None) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n", encoding="utf-8")
