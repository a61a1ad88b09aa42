"""A task of a data root (its folder ``DATA/TASK`` and its entry in ``DATA/tasks.json``) replaced in one atomic step.

`dmole import` builds the new task whole in a staging folder of the data root (`staging`): its files, and beside
them, as ``tasks.json``, the whole registry as it will read with the new entry. Renaming that folder to
``.import-commit-TASK`` (`commit`) is the one step that decides: before it the data root is as it was (the staging
folder is hidden, and removed by the next import); after it the import has happened, even if the process dies
there, because `complete_imports` rolls it forward: the old folder set aside, the registry replaced, the new
folder moved in, the old one removed. Each of those steps finds from what exists where it stands, so an
interrupted roll-forward is finished by the next one. It runs at the start of every import and whenever a workspace
over the data root is opened, so no reader sees the moment between two of its steps as a state.

One import at a time per data root: the data root folder itself is locked (flock on its descriptor, released when
the process dies), so no lock file is left behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..config import ConfigError
from .registry import REGISTRY_FILE

STAGING, COMMIT, OLD = ".import-staging-", ".import-commit-", ".import-old-"


@contextmanager
def import_lock(data_root: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the data root's import lock; yields False (and holds nothing) when another process holds it and
    ``wait`` is off, and a ConfigError when it is on (an import never waits behind another)."""
    fd = os.open(data_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait:
                raise ConfigError(f"{data_root} is being imported into by another process") from None
            yield False
            return
        yield True
    finally:
        os.close(fd)


def staging(data_root: Path) -> Path:
    """A new hidden staging folder for one import (under the lock)."""
    return Path(tempfile.mkdtemp(dir=data_root, prefix=STAGING))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(data_root: Path, task: str, staged: Path) -> Path:
    """Make ``staged`` (the task's files and the new registry as ``tasks.json``) the task ``task``: one atomic
    rename, then the roll-forward. Returns the task's folder."""
    for folder, _, files in os.walk(staged):
        for name in files:
            _fsync(Path(folder, name))
        _fsync(Path(folder))
    os.replace(staged, data_root / f"{COMMIT}{task}")  # the commit
    _fsync(data_root)
    roll_forward(data_root)
    return data_root / task


def complete_imports(data_root: Path) -> None:
    """Finish any import that committed but was interrupted, and clear what dead imports left (unless an import is
    running now: it does so itself)."""
    if not data_root.is_dir() or not os.access(data_root, os.R_OK | os.W_OK | os.X_OK):
        return  # no data root yet, or one this user cannot import into (a shared, read-only one)
    with import_lock(data_root, wait=False) as held:
        if held:
            roll_forward(data_root)


def roll_forward(data_root: Path) -> None:
    """(Under `import_lock`.) Each committed import moved into place; dead imports' staging folders removed."""
    for committed in sorted(data_root.glob(f"{COMMIT}*")):
        task = committed.name.removeprefix(COMMIT)
        target, old, registry = data_root / task, data_root / f"{OLD}{task}", committed / REGISTRY_FILE
        if registry.exists():  # the registry not replaced yet: the old folder (if any) is still in place
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)  # what an earlier roll-forward had left to remove
                os.replace(target, old)
            os.replace(registry, data_root / REGISTRY_FILE)
        if not target.exists():
            os.replace(committed, target)
        _fsync(data_root)
    for leftover in [*data_root.glob(f"{OLD}*"), *data_root.glob(f"{STAGING}*")]:
        shutil.rmtree(leftover, ignore_errors=True)
