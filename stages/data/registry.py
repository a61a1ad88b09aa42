"""The task registry of a data root, ``tasks.json``: read by `dmole init`, extended by `dmole import`."""

from __future__ import annotations

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


def with_task(path: Path, spec: TaskSpec, *, replace: bool) -> dict:
    """The registry document with ``spec`` added at the end, or in place of the entry of its name when ``replace``
    (else that is an error); the registry, if there is one, must be valid."""
    entries = [task.model_dump(exclude_defaults=True) for task in read_registry(path)] if path.exists() else []
    names = [entry["name"] for entry in entries]
    if spec.name in names and not replace:
        raise ConfigError(f"{path} already has a task {spec.name!r}; pass --overwrite to replace it")
    entry = spec.model_dump(exclude_defaults=True)
    if spec.name in names:
        entries[names.index(spec.name)] = entry
    else:
        entries.append(entry)
    return {"tasks": entries}
