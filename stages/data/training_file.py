"""Reader and validator of the training chat format: `image` and `conversations` per sample, one JSON object per
line (D-MoLE's JSONL) or a JSON list of such objects (LLaVA's ``llava_v1_5_mix665k.json``, CoIN's train files)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import DataError
from .images import resolve_image
from .jsonl import read_records, require, with_images
from .samples import IMAGE_PLACEHOLDER, TrainSample


def read_training_file(
    path: Path, *, data_root: Path, image_root: Path, skip_text_only: bool = False
) -> list[TrainSample]:
    """Validate every sample before returning anything, so a stage stops before it writes. ``skip_text_only``
    leaves out the entries without an image (else each is an error)."""
    records = with_images(read_records(path)) if skip_text_only else read_records(path)
    samples = train_records(records, source=path, data_root=data_root, image_root=image_root)
    if not samples:
        raise DataError(path, "no samples")
    return samples


def train_records(
    records: Iterable[tuple[int | None, str, dict]], *, source: Path, data_root: Path, image_root: Path
) -> list[TrainSample]:
    """Training samples from ``(line, prefix, record)`` triples (`read_records`' or another reader's), each
    validated; errors name ``source`` with the line or the prefixed field."""
    samples: list[TrainSample] = []
    seen_ids: dict[str, str] = {}
    directories: dict[Path, Path] = {}
    for line, prefix, record in records:
        if "image" not in record:  # LLaVA's mix has text-only conversations
            raise DataError(
                source,
                "missing: dmole trains on image samples (filter out text-only conversations, or set the "
                "task's skip_text_only)",
                line=line,
                field=f"{prefix}image",
            )
        image = resolve_image(
            data_root,
            image_root,
            record["image"],
            source=source,
            line=line,
            field=f"{prefix}image",
            directories=directories,
        )
        turns = _turns(record, path=source, line=line, prefix=prefix)
        position = f"entry {prefix.rstrip('.')}" if prefix else f"line {line}"
        sample_id = _sample_id(record, path=source, line=line, prefix=prefix)
        if sample_id in seen_ids:
            raise DataError(source, f"id {sample_id!r} repeats {seen_ids[sample_id]}", line=line, field=f"{prefix}id")
        seen_ids[sample_id] = position
        samples.append(TrainSample(id=sample_id, image=image, turns=turns))
    return samples


def _sample_id(record: dict, *, path: Path, line: int | None, prefix: str) -> str:
    """The record's ``id``; by default its line number (JSONL) or its index (a JSON list)."""
    if "id" not in record:
        return str(line) if line is not None else prefix.strip("[].")
    return str(require(record, "id", (str, int), path=path, line=line, prefix=prefix))


def _turns(record: dict, *, path: Path, line: int | None, prefix: str) -> tuple[tuple[str, str], ...]:
    conversations = require(record, "conversations", list, path=path, line=line, prefix=prefix)
    if len(conversations) < 2 or len(conversations) % 2:
        raise DataError(
            path,
            "expected alternating human/gpt turns, an even number of at least 2",
            line=line,
            field=f"{prefix}conversations",
        )
    values = []
    for index, turn in enumerate(conversations):
        where = f"{prefix}conversations[{index}]"
        if not isinstance(turn, dict):
            raise DataError(path, "expected an object with 'from' and 'value'", line=line, field=where)
        expected = "human" if index % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise DataError(path, f"expected from={expected!r}, got {turn.get('from')!r}", line=line, field=where)
        if not isinstance(turn.get("value"), str):
            raise DataError(path, "'value' must be a string", line=line, field=where)
        values.append(turn["value"])
    first = values[0]
    count = first.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise DataError(
            path,
            f"the first human turn has {count} '{IMAGE_PLACEHOLDER}' placeholders; one image per sample is supported",
            line=line,
            field=f"{prefix}conversations[0]",
        )
    if count == 0:
        values[0] = f"{IMAGE_PLACEHOLDER}\n{first}"
    if any(IMAGE_PLACEHOLDER in value for value in values[1:]):
        raise DataError(
            path,
            f"'{IMAGE_PLACEHOLDER}' may only appear in the first human turn",
            line=line,
            field=f"{prefix}conversations",
        )
    return tuple(zip(values[0::2], values[1::2]))
