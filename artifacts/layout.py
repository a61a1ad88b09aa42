"""Where things live inside a workspace, and which names are allowed."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InvalidName

CONFIG = "workspace.json"
MANIFEST = "manifest.json"
LATEST = "LATEST"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a valid stage or task name, else raise InvalidName."""
    if not is_valid_name(name):
        raise InvalidName(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def version_dirs(task_dir: Path) -> dict[int, Path]:
    """Every `v<N>` folder of a stage/task, complete or not, by number."""
    if not task_dir.is_dir():
        return {}
    found = {}
    for p in task_dir.iterdir():
        m = _VERSION_DIR.fullmatch(p.name)
        if m and p.is_dir():
            found[int(m[1])] = p
    return found
