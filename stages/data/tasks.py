"""Load a registered task's training and evaluation samples, validated against its data root."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import TaskSpec
from .errors import DataError
from .eval_files import read_eval_file
from .samples import EvalSample, TrainSample
from .training_file import read_training_file


def _roots(data_root: Path, task: TaskSpec) -> tuple[Path, Path]:
    if not data_root.is_dir():
        raise DataError(data_root, "data folder does not exist")
    image_root = data_root / task.image_root if task.image_root else data_root
    return data_root, image_root


def _inside(data_root: Path, relative: str, field: str, task: TaskSpec) -> Path:
    path = (data_root / relative).resolve()
    if not path.is_relative_to(data_root.resolve()):
        raise DataError(data_root, f"task {task.name!r}: '{relative}' escapes the data root", field=field)
    return path


def load_train_samples(data_root: Path, task: TaskSpec) -> list[TrainSample]:
    data_root, image_root = _roots(data_root, task)
    path = _inside(data_root, task.train, "train", task)
    return read_training_file(path, data_root=data_root, image_root=image_root, skip_text_only=task.skip_text_only)


def load_eval_samples(data_root: Path, task: TaskSpec) -> list[EvalSample]:
    data_root, image_root = _roots(data_root, task)
    if task.eval_image_root:
        image_root = _inside(data_root, task.eval_image_root, "eval_image_root", task)
    path = _inside(data_root, task.eval, "eval", task)
    annotations = _inside(data_root, task.eval_annotations, "eval_annotations", task) if task.eval_annotations else None
    return read_eval_file(
        task.family,
        path,
        data_root=data_root,
        image_root=image_root,
        annotations=annotations,
        skip_text_only=task.skip_text_only,
    )


def task_files(data_root: Path, task: TaskSpec) -> list[Path]:
    """The annotation files a task reads, the training file first: their hashes make downstream artifacts stale
    when data changes (everything after the first is the evaluation set)."""
    files = [_inside(data_root, task.train, "train", task), _inside(data_root, task.eval, "eval", task)]
    if task.eval_annotations:
        files.append(_inside(data_root, task.eval_annotations, "eval_annotations", task))
    return files


def eval_set_hash(data_root: Path, task: TaskSpec) -> str:
    """sha256 over the task's evaluation files (what an evaluation records as ``eval_set_sha256``)."""
    digest = hashlib.sha256()
    for path in task_files(data_root, task)[1:]:
        digest.update(path.read_bytes())
    return digest.hexdigest()
