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


def silent(description: str, total: int) -> AbstractContextManager[Tracker]:
    return nullcontext(_Silent())
