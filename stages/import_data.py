"""`dmole import`: a local Hugging Face dataset (a ``save_to_disk`` folder or parquet shards with an image column)
becomes a task of a data root: its images under ``DATA/TASK/images/``, its evaluation split in the family's format,
its training split as the training chat, and its entry in ``DATA/tasks.json``.

Every row is converted to the family's record and validated by the same readers as a JSONL line (errors name the
dataset, the split, the row and the field); the written files are then read back as any task's are. Everything is
written into a hidden folder of the data root first and moved into place at the end, so a failed import leaves
nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, TaskSpec, parse_model
from .data.errors import DataError
from .data.eval_files import eval_records
from .data.hub_dataset import image_file, open_splits, pick_split, raw_images
from .data.prompts import render_prompt
from .data.registry import REGISTRY_FILE, check_new_task, register_task
from .data.row_mapping import (check_box_format, chat_columns, family_record, field_columns,
                               training_answers)
from .data.samples import IMAGE_PLACEHOLDER, EvalSample
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
        return (f"import {self.task.name}: wrote {self.n_train} training and {self.n_eval} evaluation samples "
                f"({self.n_images} images) to {self.folder}, registered in {self.registry}, in {self.seconds:.1f}s")


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


def import_dataset(source: Path, data_root: Path, task: str, family: str, *, train_split: str = "train",
                   eval_split: str | None = None, mapping: dict[str, str] | None = None, prompt: str | None = None,
                   box_format: str = "xyxy", overwrite: bool = False, progress: Progress = silent) -> ImportResult:
    """Import ``source`` as task ``task`` of ``family`` into ``data_root``; ``mapping`` names the dataset column of
    a record field (default: the field's own name or a usual alias), ``prompt`` the task's prompt (also the
    training chat's question)."""
    start = time.perf_counter()
    spec = parse_model(TaskSpec, {"name": task, "family": family, "train": f"{task}/{TRAIN_FILE}",
                                  "eval": f"{task}/{eval_file_name(family)}", "image_root": task, "prompt": prompt},
                       source="dmole import")
    check_box_format(box_format)
    if not source.exists():
        raise DataError(source, "does not exist")
    if not data_root.is_dir():
        raise ConfigError(f"data folder {data_root} does not exist")
    target, registry = data_root / task, data_root / REGISTRY_FILE
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; pass --overwrite to replace it")
    check_new_task(registry, task, replace=overwrite)
    staging = Path(tempfile.mkdtemp(dir=data_root, prefix=f".import-{task}-"))
    try:
        staged = spec.model_copy(update={"train": f"{staging.name}/{TRAIN_FILE}",
                                         "eval": f"{staging.name}/{eval_file_name(family)}",
                                         "image_root": staging.name})
        splits = open_splits(source, staging / ".cache")
        eval_name, test = pick_split(splits, eval_split, source, "eval")
        train_name, train = pick_split(splits, train_split, source, "train")
        if train_name == eval_name:
            raise ConfigError(f"the training and evaluation splits are both {train_name!r}")
        named = mapping or {}
        images = _Images(staging, source)
        convert = _Converter(spec, source, data_root, staging, images, box_format, progress)
        records, _ = convert.family_records(eval_name, test, field_columns(family, test.column_names, named))
        chats = (convert.chats(train_name, train, chat_columns(train.column_names, named))
                 if CONVERSATIONS in train.column_names
                 else convert.chats_from(convert.family_records(train_name, train,
                                                                field_columns(family, train.column_names, named))[1]))
        _write_eval_file(family, records, staging / eval_file_name(family))
        _write_jsonl(chats, staging / TRAIN_FILE)
        n_train, evaluation = len(load_train_samples(data_root, staged)), load_eval_samples(data_root, staged)
        for sample in evaluation:
            render_prompt(staged, sample)  # a prompt field the records lack stops the import, not a later stage
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left after a failure (gone already after the move)
    register_task(registry, spec)
    return ImportResult(spec, target, registry, n_train, len(evaluation), len(images.names),
                        time.perf_counter() - start)


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
            for index, row in enumerate(raw_images(dataset, image_column)):
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
            samples += eval_records(self.spec.family, [(None, where, record)], source=self.source,
                                    data_root=self.data_root, image_root=self.staging)
            records.append(record)
        return records, samples

    def chats_from(self, samples: list[EvalSample]) -> list[dict]:
        """The training chat of evaluation-form samples: the task's prompt, then the training answer(s)."""
        chats = []
        for sample in samples:
            question = f"{IMAGE_PLACEHOLDER}\n{render_prompt(self.spec, sample)}"
            answers = training_answers(self.spec.family, sample.references)
            for k, answer in enumerate(answers):
                chats.append({"id": sample.id if len(answers) == 1 else f"{sample.id}-{k}",
                              "image": sample.image.relative_to(self.staging.resolve()).as_posix(),
                              "conversations": [{"from": "human", "value": question},
                                                {"from": "gpt", "value": answer}]})
        return chats

    def chats(self, split: str, dataset, columns: dict[str, str]) -> list[dict]:
        """A training split that holds its own chat (a ``conversations`` column, LLaVA-style)."""
        chats = []
        for index, where, row, image, _ in self._rows(split, dataset, columns["image"]):
            chat = {"id": row[columns["id"]] if "id" in columns else index, "image": image,
                    CONVERSATIONS: row[CONVERSATIONS]}
            train_records([(None, where, chat)], source=self.source, data_root=self.data_root,
                          image_root=self.staging)
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
    document = {"images": [{"id": r["question_id"], "file_name": r["image"]} for r in records],
                "annotations": [{"image_id": r["question_id"], "caption": caption}
                                for r in records for caption in r["captions"]]}
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
