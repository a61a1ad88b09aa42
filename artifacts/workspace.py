"""A workspace folder: its config file and the versioned artifacts of every stage and task."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

from .errors import MissingArtifact, TamperedArtifact
from .io import write_json
from .layout import CONFIG, LATEST, LOCK, check_name, is_valid_name, version_dirs
from .lock import hold_lock
from .manifest import load_manifest, read_manifest
from .version import InputRef, Version
from .writer import Writer, open_writer


class Workspace:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def write_config(self, cfg: dict) -> None:
        write_json(self.root / CONFIG, cfg)

    def _task_dir(self, stage: str, task: str) -> Path:
        return self.root / check_name("stage", stage) / check_name("task", task)

    def _load(self, stage: str, task: str, number: int) -> Version | None:
        path = self._task_dir(stage, task) / f"v{number}"
        manifest = load_manifest(path, stage, task, number)
        return Version(stage, task, number, path, manifest) if manifest else None

    def versions(self, stage: str, task: str) -> list[Version]:
        """Committed versions, oldest first; folders without a valid manifest are skipped."""
        found = (self._load(stage, task, n) for n in sorted(version_dirs(self._task_dir(stage, task))))
        return [v for v in found if v]

    def version(self, stage: str, task: str, number: int) -> Version:
        v = self._load(stage, task, number)
        if v is None:
            problem = read_manifest(self._task_dir(stage, task) / f"v{number}", stage, task, number)[1]
            if problem:
                raise TamperedArtifact(f"{stage}/{task} v{number} was modified after it was written ({problem})")
            raise MissingArtifact(f"no version {number} of the '{stage}' artifact for task '{task}'")
        return v

    def tampered(self, stage: str, task: str) -> list[tuple[int, Path, str]]:
        """``(number, folder, problem)`` of each version folder whose manifest is damaged or was edited by hand:
        not a version (no stage reads it), but `dmole ls` and `show` say so."""
        found = (
            (n, p, read_manifest(p, stage, task, n)[1]) for n, p in version_dirs(self._task_dir(stage, task)).items()
        )
        return sorted((n, p, problem) for n, p, problem in found if problem)

    def latest(self, stage: str, task: str) -> Version | None:
        """The version LATEST points at, or the highest valid one if LATEST is missing or broken."""
        try:
            v = self._load(stage, task, int((self._task_dir(stage, task) / LATEST).read_text()))
        except (OSError, ValueError):
            v = None
        if v is None:
            committed = self.versions(stage, task)
            v = committed[-1] if committed else None
        return v

    def require(self, stage: str, task: str, hint: str | None = None) -> Version:
        v = self.latest(stage, task)
        if v is None:
            run = f" (run `{hint}` first)" if hint else ""
            raise MissingArtifact(f"no '{stage}' artifact for task '{task}'{run}")
        return v

    def stage_tasks(self) -> list[tuple[str, str]]:
        """Every ``(stage, task)`` that has a folder, sorted by stage then task."""
        if not self.root.is_dir():
            return []
        return [
            (stage_dir.name, task_dir.name)
            for stage_dir in sorted(self.root.iterdir())
            if stage_dir.is_dir() and is_valid_name(stage_dir.name)
            for task_dir in sorted(stage_dir.iterdir())
            if task_dir.is_dir() and is_valid_name(task_dir.name)
        ]

    def all_latest(self) -> list[Version]:
        """The latest version of every stage/task, sorted by stage then task."""
        return [v for v in (self.latest(stage, task) for stage, task in self.stage_tasks()) if v]

    def find_current(
        self, stage: str, task: str, config_hash: str, inputs: list[InputRef], sources: dict[str, str] | None = None
    ) -> Version | None:
        """The latest version if it was built from this config, inputs with the same content and these sources."""
        v = self.latest(stage, task)
        if v is None or v.manifest["config_hash"] != config_hash or self.stale_sources(v, sources or {}):
            return None
        recorded = sorted((i["stage"], i["task"], i["content_hash"]) for i in v.manifest["inputs"])
        wanted = sorted((i.stage, i.task, i.content_hash) for i in inputs)
        return v if recorded == wanted else None

    def stale_inputs(self, v: Version) -> list[str]:
        """Why `v` is out of date: each input that is gone or whose content changed since."""
        reasons = []
        for ref in v.manifest["inputs"]:
            name = f"{ref['stage']}/{ref['task']}"
            now = self.latest(ref["stage"], ref["task"])
            if now is None:
                reasons.append(f"input {name} v{ref['version']} is gone")
            elif now.content_hash != ref["content_hash"]:
                reasons.append(f"input {name} changed: built from v{ref['version']}, latest is v{now.number}")
        return reasons

    @staticmethod
    def stale_sources(v: Version, current: dict[str, str | None]) -> list[str]:
        """Why `v` is out of date with what it was built from outside the workspace: each source of ``current``
        (name -> content fingerprint now, None when it cannot be read) that `v` recorded otherwise or not at all."""
        recorded = v.manifest.get("sources", {})
        reasons = []
        for name, now in current.items():
            if name not in recorded:
                reasons.append(f"{v} was written before dmole recorded the {name} it is built on")
            elif now is None:
                reasons.append(f"the {name} {v} was built on is missing")
            elif recorded[name] != now:
                reasons.append(f"{v} was built on another {name} than the workspace's {name} now")
        return reasons

    def stale_because(self, v: Version, sources: dict[str, str | None]) -> list[str]:
        """Every reason `v` is out of date: its inputs (`stale_inputs`) and its sources (`stale_sources`)."""
        return self.stale_inputs(v) + self.stale_sources(v, sources)

    def status(self, v: Version, sources: dict[str, str | None] | None = None) -> str:
        """Return "tampered" (an output fails its checksum), "stale" (an input changed, or one of ``sources``,
        see `stale_sources`) or "ok"."""
        try:
            v.verify()
        except (TamperedArtifact, MissingArtifact):
            return "tampered"
        return "stale" if self.stale_because(v, sources or {}) else "ok"

    def lock(self, stage: str, task: str) -> AbstractContextManager[None]:
        return hold_lock(self._task_dir(stage, task) / LOCK, f"{stage}/{task}")

    def writer(
        self,
        stage: str,
        task: str,
        *,
        config: dict,
        inputs: list[InputRef],
        environment: dict,
        toolkit_version: str,
        sources: dict[str, str] | None = None,
    ) -> AbstractContextManager[Writer]:
        """Context manager yielding a Writer; the new version is committed when it exits cleanly. ``sources``
        are the content fingerprints of what it is built from outside the workspace (the model), by name."""
        return open_writer(
            self._task_dir(stage, task),
            stage,
            task,
            config=config,
            inputs=inputs,
            sources=sources or {},
            environment=environment,
            toolkit_version=toolkit_version,
        )
