"""File I/O for artifacts: atomic writes, checksums, JSON and Parquet.

pyarrow and numpy are imported inside the functions that need them, so importing
the storage layer stays cheap.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a sibling temp file, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def copy_all_or_none(pairs: list[tuple[Path, Path]]) -> None:
    """Copy each (source, destination): every destination is replaced, or, if a copy fails (a full disk), none is.

    Each copy goes to a sibling temp file first; the renames come only once every copy is whole on disk.
    """
    for _, dst in pairs:
        if dst.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(dst))
    staged: list[tuple[Path, Path]] = []
    try:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
            staged.append((tmp, dst))
            with open(src, "rb") as source, open(tmp, "xb") as target:
                shutil.copyfileobj(source, target)
                target.flush()
                os.fsync(target.fileno())
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, dst in staged:
        os.replace(tmp, dst)
    for folder in {dst.parent for _, dst in pairs}:
        fsync_path(folder)


def _unreadable(path: str | os.PathLike, err: Exception) -> ArtifactError:
    if isinstance(err, FileNotFoundError):
        reason = "file not found"
    else:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return ArtifactError(f"cannot read {path}: {reason}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; ArtifactError naming the file if it is missing or damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _unreadable(path, e) from e


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_parquet(
    path: str | os.PathLike,
    table: pa.Table | dict[str, Any],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a table (or a dict of columns) to Parquet atomically, with string metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(table, dict):
        table = pa.table(table)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    atomic_write(path, lambda f: pq.write_table(table, f))


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet file; ArtifactError naming the file if it is missing or damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # one file, read as one: read_table would import pyarrow.dataset, a quarter second of every stage's start
        with pq.ParquetFile(path) as parquet:
            return parquet.read()
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from e


def table_metadata(table: pa.Table) -> dict[str, str]:
    """The schema metadata of a table, decoded to strings."""
    return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}


def fixed_size_float_list(array: np.ndarray) -> pa.FixedSizeListArray:
    """One float32 fixed-size list per row of a 2-D array (how embeddings are stored)."""
    import numpy as np
    import pyarrow as pa

    a = np.ascontiguousarray(array, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def table_to_numpy(table: pa.Table, column: str) -> np.ndarray:
    """A fixed-size list column as a 2-D float32 array."""
    import numpy as np
    import pyarrow as pa

    if column not in table.column_names:
        raise ArtifactError(f"table has no column {column!r}")
    col = table.column(column)
    if not pa.types.is_fixed_size_list(col.type) or col.null_count:
        raise ArtifactError(f"column {column!r} is not a fixed-size list without nulls ({col.type})")
    # flatten() honours slice offsets, unlike .values
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in col.chunks]
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
    return flat.astype(np.float32, copy=False).reshape(-1, col.type.list_size)
