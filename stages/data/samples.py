"""The two sample shapes every stage works with: chat training samples and evaluation samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class TrainSample:
    """One line of a training chat JSONL: an image and alternating (human, gpt) turns."""

    id: str
    image: Path
    turns: tuple[tuple[str, str], ...]

    @property
    def question(self) -> str:
        """The first user turn without the image placeholder: the text part of the sequence embedding."""
        return self.turns[0][0].replace(IMAGE_PLACEHOLDER, "").strip()


@dataclass(frozen=True)
class EvalSample:
    """One evaluation item: the prompt's fields and the references its metric family needs."""

    id: str
    image: Path
    prompt_fields: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
