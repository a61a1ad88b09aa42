"""Readers of the evaluation files, one per metric family (spec/dmole.md §15)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import DataError
from .images import resolve_image
from .jsonl import read_json, read_jsonl, require
from .samples import EvalSample

FAMILIES = ("caption", "vqa10", "short", "choice", "grounding")


def read_eval_file(family: str, path: Path, *, data_root: Path, image_root: Path) -> list[EvalSample]:
    if family not in FAMILIES:
        raise DataError(path, f"unknown metric family {family!r}; expected one of {', '.join(FAMILIES)}")
    if family == "caption":
        samples = _read_caption(path, data_root=data_root, image_root=image_root)
    else:
        samples = []
        for line, record in read_jsonl(path):
            image = resolve_image(data_root, image_root, record.get("image"), source=path, line=line)
            fields, references = _JSONL_READERS[family](record, path, line)
            samples.append(EvalSample(id=_record_id(record, line, path), image=image,
                                      prompt_fields=fields, references=references))
    if not samples:
        raise DataError(path, "no evaluation samples")
    _check_unique_ids(samples, path)
    return samples


def _record_id(record: dict, line: int, path: Path) -> str:
    for key in ("question_id", "id"):
        if key in record:
            return str(require(record, key, (str, int), path=path, line=line))
    return str(line)


def _check_unique_ids(samples: list[EvalSample], path: Path) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise DataError(path, f"sample id {sample.id!r} appears more than once", field="id")
        seen.add(sample.id)


def _read_caption(path: Path, *, data_root: Path, image_root: Path) -> list[EvalSample]:
    document = read_json(path)
    if not isinstance(document, dict):
        raise DataError(path, "expected a COCO-style object with 'images' and 'annotations'")
    images = require(document, "images", list, path=path, line=None)
    annotations = require(document, "annotations", list, path=path, line=None)
    captions: dict[str, list[str]] = {}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            raise DataError(path, "expected an object with 'image_id' and a string 'caption'", field=where)
        captions.setdefault(str(annotation.get("image_id")), []).append(annotation["caption"])
    samples = []
    for index, entry in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(path, "expected an object with 'id' and 'file_name'", field=where)
        image = resolve_image(data_root, image_root, entry.get("file_name"), source=path, line=None,
                              field=f"{where}.file_name")
        references = captions.get(str(entry["id"]))
        if not references:
            raise DataError(path, f"image id {entry['id']!r} has no caption annotation", field=where)
        samples.append(EvalSample(id=str(entry["id"]), image=image, references={"references": references}))
    return samples


def _read_vqa10(record: dict, path: Path, line: int) -> tuple[dict, dict]:
    question = require(record, "question", str, path=path, line=line)
    answers = require(record, "answers", list, path=path, line=line)
    if len(answers) != 10 or not all(isinstance(answer, str) for answer in answers):
        raise DataError(path, f"expected 10 answer strings, got {len(answers)} items", line=line, field="answers")
    return {"question": question}, {"answers": answers}


def _read_short(record: dict, path: Path, line: int) -> tuple[dict, dict]:
    question = require(record, "question", str, path=path, line=line)
    answer = require(record, "answer", (str, list), path=path, line=line)
    answers = [answer] if isinstance(answer, str) else answer
    if not answers or not all(isinstance(item, str) for item in answers):
        raise DataError(path, "expected a string or a non-empty list of strings", line=line, field="answer")
    return {"question": question}, {"answer": answers}


def _read_choice(record: dict, path: Path, line: int) -> tuple[dict, dict]:
    question = require(record, "question", str, path=path, line=line)
    choices = require(record, "choices", list, path=path, line=line)
    if not 2 <= len(choices) <= 5 or not all(isinstance(choice, str) for choice in choices):
        raise DataError(path, f"expected 2 to 5 option strings, got {len(choices)} items", line=line, field="choices")
    answer = require(record, "answer", int, path=path, line=line)
    if not 0 <= answer < len(choices):
        raise DataError(path, f"index {answer} is outside the {len(choices)} choices", line=line, field="answer")
    return {"question": question, "choices": choices}, {"choices": choices, "answer": answer}


def _read_grounding(record: dict, path: Path, line: int) -> tuple[dict, dict]:
    sent = require(record, "sent", str, path=path, line=line)
    knowledge = require(record, "knowledge", str, path=path, line=line) if "knowledge" in record else None
    width = require(record, "width", (int, float), path=path, line=line)
    height = require(record, "height", (int, float), path=path, line=line)
    box = require(record, "bbox", list, path=path, line=line)
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise DataError(path, "expected four numbers [x1, y1, x2, y2]", line=line, field="bbox")
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise DataError(path, f"box {box} is not a well-formed box inside the {width}x{height} image",
                        line=line, field="bbox")
    fields = {"sent": sent} if knowledge is None else {"sent": sent, "knowledge": knowledge}
    return fields, {"bbox": [float(v) for v in box], "width": float(width), "height": float(height)}


_JSONL_READERS: dict[str, Callable[[dict, Path, int], tuple[dict, dict]]] = {
    "vqa10": _read_vqa10,
    "short": _read_short,
    "choice": _read_choice,
    "grounding": _read_grounding,
}
