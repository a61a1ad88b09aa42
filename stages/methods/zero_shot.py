"""Zero-shot: the base model itself, never trained; its every row is the shared zero-shot evaluation."""

from __future__ import annotations

from typing_extensions import override

from .base import ContinualMethod, Matrix


class ZeroShot(ContinualMethod):
    name = "zero-shot"
    summary = "the base model, untrained (every row is `eval --zero-shot`)"
    trains = False

    @override
    def matrix(self, zero, rows, names) -> Matrix | None:
        if all(score is None for score in zero):
            return None
        return [zero] * (len(names) + 1)


METHODS = [ZeroShot()]
