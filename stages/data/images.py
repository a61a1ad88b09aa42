"""Image paths confined to the data root, and image loading with precise errors."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DataError

# Larger images are almost certainly a mistake (or a decompression bomb) for this toolkit.
MAX_IMAGE_PIXELS = 64_000_000


def resolve_image(
    data_root: Path,
    image_root: Path,
    relative: object,
    *,
    source: Path,
    line: int | None,
    field: str = "image",
    directories: dict[Path, Path] | None = None,
) -> Path:
    """Resolve ``relative`` under ``image_root`` and refuse anything that ends up outside ``data_root``.

    Symlinks and ``..`` are followed before the check, so neither can escape the root. A reader of one file
    passes the same ``directories`` for all its samples: each directory is then resolved once, not once per
    image (a path's resolution costs a system call per component).
    """
    if isinstance(relative, list):
        raise DataError(source, "one image per sample is supported; got a list", line=line, field=field)
    if not isinstance(relative, str) or not relative:
        raise DataError(source, f"expected a relative image path, got {relative!r}", line=line, field=field)
    directories = {} if directories is None else directories
    root = _resolved_directory(data_root, directories)
    candidate = Path(relative)
    if candidate.is_absolute():
        raise DataError(
            source, f"image path '{relative}' is absolute; paths are relative to the image root", line=line, field=field
        )
    joined = image_root / candidate
    if joined.name in ("", ".."):  # the root itself, or a climb: resolve it whole
        resolved = joined.resolve()
    else:
        resolved = _resolved_directory(joined.parent, directories) / joined.name
        if resolved.is_symlink():
            resolved = resolved.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(source, f"image path '{relative}' escapes the data root {root}", line=line, field=field)
    if not resolved.is_file():
        raise DataError(source, f"image file '{relative}' does not exist", line=line, field=field)
    return resolved


def _resolved_directory(directory: Path, directories: dict[Path, Path]) -> Path:
    if directory not in directories:
        directories[directory] = directory.resolve()
    return directories[directory]


def load_image(path: Path) -> Image.Image:
    """Open an image as RGB, turning unreadable or absurdly large files into a DataError."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(path, f"image is {width}x{height}, above the {MAX_IMAGE_PIXELS:,}-pixel limit")
            return image.convert("RGB")
    except Image.DecompressionBombError as error:  # PIL refuses far larger images before we can measure them
        raise DataError(path, f"image is above the {MAX_IMAGE_PIXELS:,}-pixel limit ({error})") from error
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(path, f"not a readable image ({type(error).__name__})") from error
