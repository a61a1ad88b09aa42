"""How stages report progress without knowing who renders it (the CLI draws rich bars; tests pass nothing)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class Tracker(Protocol):
    def advance(self, steps: int = 1, **status: object) -> None: ...


class Progress(Protocol):
    def __call__(self, description: str, total: int) -> AbstractContextManager[Tracker]: ...


class _Silent:
    def advance(self, steps: int = 1, **status: object) -> None:
        pass


# a Progress: called as progress(description, total=n), it shows nothing
def silent(description: str, total: int) -> AbstractContextManager[Tracker]:  # noqa: ARG001
    return nullcontext(_Silent())
