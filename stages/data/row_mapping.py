"""Rows of an outside dataset as a family's records (the fields its evaluation file holds), and the answer a
training chat gives for an evaluation sample: what `dmole import` writes."""

from __future__ import annotations

from collections import Counter

from ..config import ConfigError
from ..metrics.choice import LETTERS, option_letters
from ..metrics.grounding import format_box

# Each family's record fields besides ``image`` (docs/data.md, "Evaluation files"); then the optional ones.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "caption": ("captions",),
    "vqa10": ("question", "answers"),
    "short": ("question", "answer"),
    "choice": ("question", "choices", "answer"),
    "grounding": ("sent", "bbox"),
}
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"grounding": ("knowledge",)}
# The columns a field is looked for under when none is named (hub datasets' usual names).
USUAL_COLUMNS = {"captions": ("captions", "caption"), "choices": ("choices", "options"), "id": ("question_id", "id")}
BOX_FORMATS = ("xyxy", "xywh")


def field_columns(family: str, columns: list[str], named: dict[str, str]) -> dict[str, str]:
    """Field -> column: the column named for it (``--map field=column``), else one of its usual names; every
    required field must have one."""
    fields = ("image", *REQUIRED_FIELDS[family], *OPTIONAL_FIELDS.get(family, ()), "id")
    unknown = sorted(set(named) - set(fields))
    if unknown:
        raise ConfigError(f"--map {unknown[0]}=...: a {family} record has the fields {', '.join(fields)}")
    chosen = {}
    for field in fields:
        if field in named:
            if named[field] not in columns:
                raise ConfigError(f"--map {field}={named[field]}: no such column; the dataset has {', '.join(columns)}")
            chosen[field] = named[field]
            continue
        found = next((c for c in USUAL_COLUMNS.get(field, (field,)) if c in columns), None)
        if found is not None:
            chosen[field] = found
        elif field == "image" or field in REQUIRED_FIELDS[family]:
            raise ConfigError(
                f"no column for the {family} field {field!r}; name one with --map {field}=COLUMN "
                f"(the dataset has {', '.join(columns)})"
            )
    return chosen


def chat_columns(columns: list[str], named: dict[str, str]) -> dict[str, str]:
    """Field -> column for a split that holds its own chat: its image and, if it has one, its id."""
    image = named.get("image", "image")
    if image not in columns:
        raise ConfigError(
            f"no image column {image!r} in the training split; name one with --map image=COLUMN "
            f"(the split has {', '.join(columns)})"
        )
    found = next((c for c in ((named["id"],) if "id" in named else USUAL_COLUMNS["id"]) if c in columns), None)
    return {"image": image} | ({"id": found} if found else {})


def family_record(
    family: str, row: dict, columns: dict[str, str], image: str, size: tuple[int, int], box_format: str = "xyxy"
) -> dict:
    """One row as the family's record, its image already written at ``image`` (``size`` its width, height).
    Values are passed on as they are except for the usual conversions (a caption string to a list, a choice given
    as a letter or as its text to its index, an xywh box to xyxy); the record readers validate the rest."""
    record = {field: row[column] for field, column in columns.items() if field not in ("image", "id")}
    record["image"] = image
    if "id" in columns:
        record["question_id"] = row[columns["id"]]
    if family == "caption" and isinstance(record["captions"], str):
        record["captions"] = [record["captions"]]
    if family == "choice":
        record["answer"] = _choice_index(record["answer"], record["choices"])
    if family == "grounding":
        record["width"], record["height"] = size
        box = record["bbox"]
        if box_format == "xywh" and isinstance(box, list) and len(box) == 4:
            record["bbox"] = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
    return record


def _choice_index(answer: object, choices: object) -> object:
    """An answer given as an option letter or as the option's text, as the index the choice reader expects."""
    if not isinstance(answer, str) or not isinstance(choices, list):
        return answer
    if len(answer) == 1 and answer in LETTERS[: len(choices)]:
        return LETTERS.index(answer)
    return choices.index(answer) if answer in choices else answer


def training_answers(family: str, references: dict) -> list[str]:
    """The answer(s) a training chat gives for a sample: every caption (one chat each), the most frequent of the
    ten VQA answers, the first short answer, the option letter, the box as ``[[x1,y1,x2,y2]]`` in 0-1000."""
    if family == "caption":
        return list(references["references"])
    if family == "vqa10":
        return [Counter(references["answers"]).most_common(1)[0][0]]
    if family == "short":
        return [references["answer"][0]]
    if family == "choice":
        return [option_letters(len(references["choices"]))[references["answer"]]]
    return [format_box(references["bbox"], references["width"], references["height"])]


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``["question=query", ...]`` -> ``{"question": "query"}``."""
    mapping = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ConfigError(f"--map takes FIELD=COLUMN, got {item!r}")
        mapping[field.strip()] = column.strip()
    return mapping


def check_box_format(box_format: str) -> str:
    if box_format not in BOX_FORMATS:
        raise ConfigError(f"--bbox takes {' or '.join(BOX_FORMATS)}, got {box_format!r}")
    return box_format
