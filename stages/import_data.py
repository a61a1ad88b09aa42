"""`dmole import`: a local Hugging Face dataset (a ``save_to_disk`` folder or parquet shards with an image column)
becomes a task of a data root: its images under ``DATA/TASK/images/``, its evaluation split in the family's format,
its training split as the training chat, and its entry in ``DATA/tasks.json``.

Every row is converted to the family's record and validated by the same readers as a JSONL line (errors name the
dataset, the split, the row and the field); the written files are then read back as any task's are. Everything, the
registry with the new entry included, is written into a hidden folder of the data root first and swapped in with
one atomic step at the end (`data/task_swap.py`): a failed or killed import leaves the data root as it was, a task it
replaces included.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, TaskSpec, parse_model, require_folder
from .data.errors import DataError
from .data.eval_files import eval_records
from .data.hub_dataset import image_file, open_splits, pick_split, raw_images
from .data.prompts import render_prompt
from .data.registry import REGISTRY_FILE, with_task
from .data.row_mapping import chat_columns, check_box_format, family_record, field_columns, training_answers
from .data.samples import IMAGE_PLACEHOLDER, EvalSample
from .data.task_swap import commit, import_lock, roll_forward, staging
from .data.tasks import load_eval_samples, load_train_samples
from .data.training_file import train_records
from .progress import Progress, silent

TRAIN_FILE, IMAGE_FOLDER = "train.jsonl", "images"
CONVERSATIONS = "conversations"  # a training split with this column (LLaVA-style) is taken as the chat itself


def eval_file_name(family: str) -> str:
    return "test.json" if family == "caption" else "test.jsonl"  # COCO-style captions, JSONL otherwise


@dataclass(frozen=True)
class ImportResult:
    task: TaskSpec
    folder: Path
    registry: Path
    n_train: int
    n_eval: int
    n_images: int
    seconds: float

    def summary(self) -> str:
        return (
            f"import {self.task.name}: wrote {self.n_train} training and {self.n_eval} evaluation samples "
            f"({self.n_images} images) to {self.folder}, registered in {self.registry}, in {self.seconds:.1f}s"
        )


class _Images:
    """Writes each distinct image once, named by its content, and gives its path relative to the task folder."""

    def __init__(self, folder: Path, source: Path):
        self.folder, self.source, self.names = folder / IMAGE_FOLDER, source, set()
        self.folder.mkdir(parents=True)

    def write(self, value: object, where: str) -> tuple[str, tuple[int, int]]:
        image = image_file(value, self.source, where)
        name = hashlib.sha256(image.data).hexdigest()[:32] + image.suffix
        if name not in self.names:
            (self.folder / name).write_bytes(image.data)
            self.names.add(name)
        return f"{IMAGE_FOLDER}/{name}", (image.width, image.height)


def import_dataset(
    source: Path,
    data_root: Path,
    task: str,
    family: str,
    *,
    train_split: str = "train",
    eval_split: str | None = None,
    mapping: dict[str, str] | None = None,
    prompt: str | None = None,
    box_format: str = "xyxy",
    overwrite: bool = False,
    progress: Progress = silent,
) -> ImportResult:
    """Import ``source`` as task ``task`` of ``family`` into ``data_root``; ``mapping`` names the dataset column of
    a record field (default: the field's own name or a usual alias), ``prompt`` the task's prompt (also the
    training chat's question)."""
    start = time.perf_counter()
    spec = parse_model(
        TaskSpec,
        {
            "name": task,
            "family": family,
            "train": f"{task}/{TRAIN_FILE}",
            "eval": f"{task}/{eval_file_name(family)}",
            "image_root": task,
            "prompt": prompt,
        },
        source="dmole import",
    )
    check_box_format(box_format)
    if not source.exists():
        raise DataError(source, "does not exist")
    require_folder(data_root, "data folder")
    target, registry = data_root / task, data_root / REGISTRY_FILE
    with import_lock(data_root):
        roll_forward(data_root)  # an import a dead process committed is finished first
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{target} is a file, not a task folder; choose another --task")
        if target.exists() and not overwrite:
            raise ConfigError(f"{target} already exists; pass --overwrite to replace it")
        document = with_task(registry, spec, replace=overwrite)  # a broken registry stops the import here
        staged = staging(data_root)
        try:
            n_train, n_eval, n_images = _build(
                staged, source, data_root, spec, train_split, eval_split, mapping or {}, box_format, progress
            )
            (staged / REGISTRY_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            commit(data_root, task, staged)  # the task's folder and its registry entry, in one atomic step
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # nothing left after a failure (gone already after the commit)
    return ImportResult(spec, target, registry, n_train, n_eval, n_images, time.perf_counter() - start)


def _build(
    staged: Path,
    source: Path,
    data_root: Path,
    spec: TaskSpec,
    train_split: str,
    eval_split: str | None,
    named: dict[str, str],
    box_format: str,
    progress: Progress,
) -> tuple[int, int, int]:
    """The task's files in ``staged``, read back as any task's are: the training and evaluation samples' counts
    and the number of distinct images."""
    family = spec.family
    staged_spec = spec.model_copy(
        update={
            "train": f"{staged.name}/{TRAIN_FILE}",
            "eval": f"{staged.name}/{eval_file_name(family)}",
            "image_root": staged.name,
        }
    )
    splits = open_splits(source, staged / ".cache")
    eval_name, test = pick_split(splits, eval_split, source, "eval")
    train_name, train = pick_split(splits, train_split, source, "train")
    if train_name == eval_name:
        raise ConfigError(f"the training and evaluation splits are both {train_name!r}")
    images = _Images(staged, source)
    convert = _Converter(spec, source, data_root, staged, images, box_format, progress)
    records, _ = convert.family_records(eval_name, test, field_columns(family, test.column_names, named))
    chats = (
        convert.chats(train_name, train, chat_columns(train.column_names, named))
        if CONVERSATIONS in train.column_names
        else convert.chats_from(
            convert.family_records(train_name, train, field_columns(family, train.column_names, named))[1]
        )
    )
    _write_eval_file(family, records, staged / eval_file_name(family))
    _write_jsonl(chats, staged / TRAIN_FILE)
    n_train, evaluation = len(load_train_samples(data_root, staged_spec)), load_eval_samples(data_root, staged_spec)
    for sample in evaluation:
        render_prompt(staged_spec, sample)  # a prompt field the records lack stops the import, not a later stage
    shutil.rmtree(staged / ".cache", ignore_errors=True)
    return n_train, len(evaluation), len(images.names)


@dataclass
class _Converter:
    spec: TaskSpec
    source: Path
    data_root: Path
    staging: Path
    images: _Images
    box_format: str
    progress: Progress

    def _rows(self, split: str, dataset, image_column: str):
        """``(index, where, row, image path, size)`` per row, the image written."""
        with self.progress(f"import {split}", total=len(dataset)) as bar:
            for index, row in enumerate(raw_images(dataset, image_column, self.source)):
                where = f"{split}[{index}]."
                image, size = self.images.write(row[image_column], f"{where}{image_column}")
                yield index, where, row, image, size
                bar.advance()

    def family_records(self, split: str, dataset, columns: dict[str, str]) -> tuple[list[dict], list[EvalSample]]:
        """Each row as the family's record, and as the sample it reads as, validated as a line of its JSONL is."""
        records, samples = [], []
        for index, where, row, image, size in self._rows(split, dataset, columns["image"]):
            record = family_record(self.spec.family, row, columns, image, size, self.box_format)
            record.setdefault("question_id", index)
            samples += eval_records(
                self.spec.family,
                [(None, where, record)],
                source=self.source,
                data_root=self.data_root,
                image_root=self.staging,
            )
            records.append(record)
        return records, samples

    def chats_from(self, samples: list[EvalSample]) -> list[dict]:
        """The training chat of evaluation-form samples: the task's prompt, then the training answer(s)."""
        chats = []
        for sample in samples:
            question = f"{IMAGE_PLACEHOLDER}\n{render_prompt(self.spec, sample)}"
            answers = training_answers(self.spec.family, sample.references)
            for k, answer in enumerate(answers):
                chats.append(
                    {
                        "id": sample.id if len(answers) == 1 else f"{sample.id}-{k}",
                        "image": sample.image.relative_to(self.staging.resolve()).as_posix(),
                        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                    }
                )
        return chats

    def chats(self, split: str, dataset, columns: dict[str, str]) -> list[dict]:
        """A training split that holds its own chat (a ``conversations`` column, LLaVA-style)."""
        chats = []
        for index, where, row, image, _ in self._rows(split, dataset, columns["image"]):
            chat = {
                "id": row[columns["id"]] if "id" in columns else index,
                "image": image,
                CONVERSATIONS: row[CONVERSATIONS],
            }
            train_records([(None, where, chat)], source=self.source, data_root=self.data_root, image_root=self.staging)
            chats.append(chat)
        return chats


def _write_jsonl(records: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_eval_file(family: str, records: list[dict], path: Path) -> None:
    """The family's evaluation file: COCO-style JSON for captions, JSONL of the records otherwise."""
    if family != "caption":
        _write_jsonl(records, path)
        return
    document = {
        "images": [{"id": r["question_id"], "file_name": r["image"]} for r in records],
        "annotations": [
            {"image_id": r["question_id"], "caption": caption} for r in records for caption in r["captions"]
        ],
    }
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
