"""Strict JSON and JSONL reading: every problem names the file and the line (or the entry of a JSON list)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DataError

MAX_LINE_BYTES = 8 * 1024 * 1024


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; each line must be a JSON object."""
    if not path.is_file():
        raise DataError(path, "file does not exist")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(path, f"line is longer than {MAX_LINE_BYTES:,} bytes", line=number)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(path, f"not valid UTF-8 (byte {error.start})", line=number) from error
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(path, f"not valid JSON ({error.msg}, column {error.colno})", line=number) from error
            if not isinstance(record, dict):
                raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
            yield number, record


def read_records(path: Path) -> Iterator[tuple[int | None, str, dict]]:
    """Yield ``(line, prefix, object)`` for each record of a JSONL file, or of a JSON list of objects (LLaVA's and
    CoIN's files): there ``line`` is None and ``prefix`` names the entry, ``"[3]."``, for the fields of errors."""
    if not holds_a_list(path):
        for line, record in read_jsonl(path):
            yield line, "", record
        return
    for index, entry in enumerate(read_json(path)):
        if not isinstance(entry, dict):
            raise DataError(path, f"expected a JSON object, got {type(entry).__name__}", field=f"[{index}]")
        yield None, f"[{index}].", entry


def holds_a_list(path: Path) -> bool:
    """A JSON list starts with '['; every line of a JSONL file with '{'."""
    if not path.is_file():
        raise DataError(path, "file does not exist")
    with path.open("rb") as handle:
        start = handle.read(4096).lstrip()
    return start.startswith(b"[")


def with_images(records: Iterable[tuple[int | None, str, dict]]) -> Iterator[tuple[int | None, str, dict]]:
    """The records that name an image (``image`` present and not null): a text-only entry left out."""
    return (entry for entry in records if entry[2].get("image") is not None)


def read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(path, f"not valid UTF-8 (byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg})", line=error.lineno) from error


def require(
    record: dict, field: str, kind: type | tuple[type, ...], *, path: Path, line: int | None, prefix: str = ""
) -> object:
    """Return ``record[field]``, insisting it exists and has the expected type (bool is not an int); errors name
    the field after ``prefix`` (a JSON list's entry)."""
    if field not in record:
        raise DataError(path, "missing", line=line, field=prefix + field)
    value = record[field]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataError(path, f"expected {expected}, got {type(value).__name__}", line=line, field=prefix + field)
    return value
