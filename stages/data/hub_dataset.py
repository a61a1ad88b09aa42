"""Local Hugging Face datasets, as `dmole import` reads them: a ``save_to_disk`` folder of a DatasetDict, or a
folder of parquet shards as the hub stores them (``data/train-00000-of-00002.parquet``, ``test/...``), with
images in an image column. Read with `datasets` (imported here only, when a dataset is opened)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .images import MAX_IMAGE_PIXELS
from .jsonl import read_json

EVAL_SPLITS = ("test", "validation", "val")  # tried in this order when no evaluation split is named


def open_splits(source: Path, cache: Path) -> dict:
    """Split name -> `datasets.Dataset`; ``cache`` holds what `datasets` converts parquet shards to."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its report of a damaged file is ours to make
    saved = source / "dataset_dict.json"
    if (source / "state.json").is_file() and not saved.is_file():
        raise DataError(
            source,
            "holds one saved Dataset; save a DatasetDict with a training and an evaluation "
            "split (DatasetDict(train=..., test=...).save_to_disk(...))",
        )
    if saved.is_file():
        splits = read_json(saved)
        names = splits.get("splits") if isinstance(splits, dict) else None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise DataError(saved, "expected an object with a 'splits' list of names")
        return {
            name: _readable(lambda name=name: _saved_split(datasets, source / name), source / name) for name in names
        }
    if not source.is_dir() or not any(source.rglob("*.parquet")):
        raise DataError(
            source, "is neither a save_to_disk folder (with dataset_dict.json) nor a folder of parquet shards"
        )
    return _readable(lambda: dict(datasets.load_dataset("parquet", data_dir=str(source), cache_dir=str(cache))), source)


def _saved_split(datasets, folder: Path):
    state = read_json(folder / "state.json")
    if isinstance(state, dict) and state.get("_data_files") == []:
        return datasets.Dataset.from_dict({})  # `datasets` cannot load a split saved without rows
    return datasets.load_from_disk(str(folder))


def _readable(load, where: Path):
    """What ``load()`` returns; any failure of `datasets` or pyarrow (a damaged or missing file) as one line."""
    try:
        return load()
    except DataError:
        raise
    except Exception as error:  # they have many ways to say that a file is damaged or missing
        raise DataError(where, f"is not a readable dataset ({_one_line(error)})") from None


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def pick_split(splits: dict, name: str | None, source: Path, role: str):
    """The split ``name`` (or, for evaluation, the first of test / validation / val)."""
    candidates = (name,) if name else EVAL_SPLITS
    for candidate in candidates:
        if candidate in splits:
            if not len(splits[candidate]):
                raise DataError(source, f"the {role} split {candidate!r} has no rows")
            return candidate, splits[candidate]
    wanted = name or " / ".join(EVAL_SPLITS)
    raise DataError(
        source, f"no {role} split {wanted!r}; the dataset has {', '.join(sorted(splits))} (choose with --{role}-split)"
    )


def raw_images(dataset, column: str, source: Path):
    """``dataset`` with ``column`` as undecoded ``{"bytes", "path"}`` images (a file's bytes are kept as they are)."""
    from datasets import Image as ImageFeature

    try:
        return dataset.cast_column(column, ImageFeature(decode=False))
    except Exception as error:  # a column of numbers, lists or text that are not image files
        raise DataError(source, f"column {column!r} does not hold images ({_one_line(error)})") from None


@dataclass(frozen=True)
class ImageFile:
    data: bytes
    suffix: str
    width: int
    height: int


def image_file(value: object, source: Path, where: str) -> ImageFile:
    """The bytes, file suffix and size of one undecoded image cell; an unreadable image is a DataError."""
    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    if data is None and path:
        location = Path(path) if Path(path).is_absolute() else source / path
        data = location.read_bytes() if location.is_file() else None
    if data is None:
        raise DataError(source, "no image (neither bytes nor a readable file)", field=where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, kind = image.width, image.height, (image.format or "png").lower()
    except Image.DecompressionBombError:
        raise DataError(
            source, f"image is above the {MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb?)", field=where
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(source, f"not a readable image ({type(error).__name__})", field=where) from error
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(source, f"image is {width}x{height}, above the {MAX_IMAGE_PIXELS:,}-pixel limit", field=where)
    return ImageFile(data, ".jpg" if kind == "jpeg" else f".{kind}", width, height)
