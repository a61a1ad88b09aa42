"""The manifest of a version: hashes, building, and loading with validation."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from .errors import ArtifactError
from .io import read_json
from .layout import MANIFEST

SCHEMA_VERSION = 1
_FIELDS = (
    "schema_version",
    "stage",
    "task",
    "version",
    "created",
    "toolkit_version",
    "config",
    "config_hash",
    "inputs",
    "outputs",
    "content_hash",
    "environment",
    "summary",
    "sources",
)


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a resolved config (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(outputs: list[dict]) -> str:
    """sha256 over the "path:sha256" lines of the outputs, sorted by path."""
    lines = "".join(f"{o['path']}:{o['sha256']}\n" for o in sorted(outputs, key=lambda o: o["path"]))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def build_manifest(
    *,
    stage: str,
    task: str,
    version: int,
    toolkit_version: str,
    config: dict,
    inputs: list[dict],
    sources: dict[str, str],
    outputs: list[dict],
    environment: dict,
    summary: dict,
) -> dict:
    outputs = sorted(outputs, key=lambda o: o["path"])
    return {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "task": task,
        "version": version,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "toolkit_version": toolkit_version,
        "config": config,
        "config_hash": config_hash(config),
        "inputs": inputs,
        "sources": sources,
        "outputs": outputs,
        "content_hash": content_hash(outputs),
        "environment": environment,
        "summary": summary,
    }


# the type of every field, and of the fields of each input and output, as the writer records them
_TYPES = {
    "schema_version": int,
    "stage": str,
    "task": str,
    "version": int,
    "created": str,
    "toolkit_version": str,
    "config": dict,
    "config_hash": str,
    "inputs": list,
    "outputs": list,
    "content_hash": str,
    "environment": dict,
    "summary": dict,
}
_INPUT = {"stage": str, "task": str, "version": int, "content_hash": str}
_OUTPUT = {"path": str, "sha256": str, "bytes": int}


def _wrong_type(record: object, types: dict[str, type], where: str) -> str | None:
    if not isinstance(record, dict):
        return f"{where.rstrip('.') or 'the manifest'} is not an object"
    for key, kind in types.items():
        if key not in record:
            return f"{where}{key} is missing" if where else f"no field {key!r}"
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{where}{key} is not {'an' if kind is int else 'a'} {kind.__name__}"
    return None


def manifest_problem(m: object, stage: str, task: str, number: int) -> str | None:
    """What makes ``m`` not the manifest of version ``number`` of ``stage``/``task`` as the writer wrote it (a field
    missing, of the wrong type, an output outside the version folder, another version's identity), or None."""
    if problem := _wrong_type(m, _TYPES, ""):
        return problem
    sources = m.get("sources", {})  # absent from manifests written before sources were recorded
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        return "sources is not an object of strings"
    for i, ref in enumerate(m["inputs"]):
        if problem := _wrong_type(ref, _INPUT, f"inputs[{i}]."):
            return problem
    for i, output in enumerate(m["outputs"]):
        if problem := _wrong_type(output, _OUTPUT, f"outputs[{i}]."):
            return problem
        parts = PurePosixPath(output["path"]).parts
        if not parts or output["path"].startswith("/") or ".." in parts or output["bytes"] < 0:
            return f"outputs[{i}] ({output['path']!r}, {output['bytes']} bytes) is not a file of the version folder"
    found = (m["schema_version"], m["stage"], m["task"], m["version"])
    if found != (SCHEMA_VERSION, stage, task, number):
        return f"it names schema {found[0]}, {found[1]}/{found[2]} v{found[3]}"
    return None


def read_manifest(version_dir: Path, stage: str, task: str, number: int) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` for a valid manifest; ``(None, problem)`` for a manifest that is damaged or was edited
    by hand (never written so by the writer, which renames a version into place with its manifest); ``(None, None)``
    for a folder without one (not a version)."""
    path = version_dir / MANIFEST
    if not path.exists():
        return None, None
    try:
        m = read_json(path)
    except ArtifactError:
        return None, "manifest.json is not readable JSON"
    problem = manifest_problem(m, stage, task, number)
    return (None, f"manifest.json: {problem}") if problem else (m, None)


def load_manifest(version_dir: Path, stage: str, task: str, number: int) -> dict | None:
    """The manifest of `version_dir`, or None if it is missing, damaged or not this version's."""
    return read_manifest(version_dir, stage, task, number)[0]
