"""Writing a new version: a temp folder that is committed atomically or not at all."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from .errors import ArtifactError
from .io import atomic_write, fsync_path, sha256_file, write_json
from .layout import LATEST, LOCK, MANIFEST, TMP_PREFIX, version_dirs
from .lock import hold_lock
from .manifest import build_manifest, config_hash
from .version import InputRef, Version


class Writer:
    """Collects the files of one version in `dir`; `meta` becomes the manifest's "summary"."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.meta: dict = {}
        self.version: Version | None = None  # set once committed

    def path(self, name: str) -> Path:
        """`dir / name`, creating sub-folders; `name` is a relative path such as "adapter/x.bin"."""
        rel = PurePosixPath(name)
        if not rel.parts or rel.is_absolute() or ".." in rel.parts or rel == PurePosixPath(MANIFEST):
            raise ArtifactError(f"invalid output name {name!r}: use a relative path inside the version folder")
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@contextmanager
def open_writer(
    task_dir: Path,
    stage: str,
    task: str,
    *,
    config: dict,
    inputs: list[InputRef],
    sources: dict[str, str],
    environment: dict,
    toolkit_version: str,
) -> Iterator[Writer]:
    """Yield a Writer under the stage/task lock; commit on normal exit, discard on error."""
    config_hash(config)  # a config that is not JSON fails here, before any work is done
    header = dict(
        stage=stage,
        task=task,
        toolkit_version=toolkit_version,
        config=config,
        inputs=[asdict(i) for i in inputs],
        sources=sources,
        environment=environment,
    )
    with hold_lock(task_dir / LOCK, f"{stage}/{task}"):
        # We hold the lock, so any temp folder here belongs to a writer that died.
        for leftover in task_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = task_dir / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        tmp.mkdir()
        writer = Writer(tmp)
        try:
            yield writer
            writer.version = _commit(tmp, task_dir, header, writer.meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # already renamed away after a commit


def _commit(tmp: Path, task_dir: Path, header: dict, summary: dict) -> Version:
    if (tmp / MANIFEST).exists():
        raise ArtifactError(f"a stage wrote {tmp / MANIFEST}; that name is reserved for the manifest")
    outputs = []
    for dirpath, _, filenames in os.walk(tmp):
        for name in filenames:
            p = Path(dirpath, name)
            outputs.append({"path": p.relative_to(tmp).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size})
            fsync_path(p)
        fsync_path(dirpath)
    number = max(version_dirs(task_dir), default=0) + 1
    manifest = build_manifest(version=number, outputs=outputs, summary=summary, **header)
    write_json(tmp / MANIFEST, manifest)
    final = task_dir / f"v{number}"
    os.rename(tmp, final)
    fsync_path(task_dir)
    atomic_write(task_dir / LATEST, lambda f: f.write(f"{number}\n".encode()))
    return Version(header["stage"], header["task"], number, final, manifest)
