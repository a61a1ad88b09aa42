"""The task registry of a data root, ``tasks.json``: read by `dmole init`, extended by `dmole import`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..config import ConfigError, TaskSpec, parse_model
from .jsonl import read_json

REGISTRY_FILE = "tasks.json"


def read_registry(path: Path) -> list[TaskSpec]:
    document = read_json(path)
    entries = document.get("tasks") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected an object with a 'tasks' list")
    return [parse_model(TaskSpec, entry, source=f"{path}: tasks[{i}]") for i, entry in enumerate(entries)]


def check_new_task(path: Path, name: str, *, replace: bool) -> None:
    """Refuse to register ``name`` twice unless ``replace`` (the registry, if there is one, must be valid)."""
    if path.exists() and not replace and any(task.name == name for task in read_registry(path)):
        raise ConfigError(f"{path} already has a task {name!r}; pass --overwrite to replace it")


def register_task(path: Path, spec: TaskSpec) -> None:
    """Add ``spec`` at the end of the registry, or in place of the entry of the same name; written atomically."""
    entries = [task.model_dump(exclude_defaults=True) for task in read_registry(path)] if path.exists() else []
    entry = spec.model_dump(exclude_defaults=True)
    names = [e["name"] for e in entries]
    if spec.name in names:
        entries[names.index(spec.name)] = entry
    else:
        entries.append(entry)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump({"tasks": entries}, file, indent=2)
        file.write("\n")
    os.replace(temporary, path)
