"""The manifest of a version: hashes, building, and loading with validation."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from .errors import ArtifactError
from .io import read_json
from .layout import MANIFEST

SCHEMA_VERSION = 1
_FIELDS = (
    "schema_version", "stage", "task", "version", "created", "toolkit_version", "config",
    "config_hash", "inputs", "outputs", "content_hash", "environment", "summary",
)


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a resolved config (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(outputs: list[dict]) -> str:
    """sha256 over the "path:sha256" lines of the outputs, sorted by path."""
    lines = "".join(f"{o['path']}:{o['sha256']}\n" for o in sorted(outputs, key=lambda o: o["path"]))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def build_manifest(*, stage: str, task: str, version: int, toolkit_version: str, config: dict,
                   inputs: list[dict], outputs: list[dict], environment: dict, summary: dict) -> dict:
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
        "outputs": outputs,
        "content_hash": content_hash(outputs),
        "environment": environment,
        "summary": summary,
    }


def load_manifest(version_dir: Path, stage: str, task: str, number: int) -> dict | None:
    """The manifest of `version_dir`, or None if it is missing, damaged or not this version's."""
    try:
        m = read_json(version_dir / MANIFEST)
    except ArtifactError:
        return None
    if not isinstance(m, dict) or any(k not in m for k in _FIELDS):
        return None
    if (m["schema_version"], m["stage"], m["task"], m["version"]) != (SCHEMA_VERSION, stage, task, number):
        return None
    return m
