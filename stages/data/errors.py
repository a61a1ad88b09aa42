"""The one error type for bad input data: it always names the file, and the line and field when known."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


class DataError(UserError):
    """A user error in a data file, rendered as one line: ``file:line: field 'x': what is wrong``."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = Path(path), line, field, message
        where = f"{path}:{line}" if line is not None else f"{path}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")
