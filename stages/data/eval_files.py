"""Readers of the evaluation files, one per metric family (spec/dmole.md §15).

Besides COCO captions and the pair forms (questions in one file, answers in another), the records of a family
are one JSON object per line (D-MoLE's JSONL) or a JSON list of objects (LLaVA's and CoIN's question files,
``{question_id, image, text, answer}``; CoIN's grounding questions give ``answer_bbox`` and ``size`` instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..config import PAIR_FAMILIES
from .errors import DataError
from .images import resolve_image
from .jsonl import holds_a_list, read_json, read_records, require, with_images
from .samples import IMAGE_PLACEHOLDER, EvalSample

FAMILIES = ("caption", "vqa10", "short", "choice", "grounding")
Records = Iterable[tuple[int | None, str, dict]]  # (line, field prefix, record): read_records' triples


def read_eval_file(
    family: str,
    path: Path,
    *,
    data_root: Path,
    image_root: Path,
    annotations: Path | None = None,
    skip_text_only: bool = False,
) -> list[EvalSample]:
    """Every sample of an evaluation file, validated. ``annotations`` is a pair form's answers file;
    ``skip_text_only`` leaves out the questions without an image (else each is an error)."""
    if family not in FAMILIES:
        raise DataError(path, f"unknown metric family {family!r}; expected one of {', '.join(FAMILIES)}")
    if annotations is not None and family not in PAIR_FAMILIES:
        raise DataError(
            annotations,
            f"a separate annotations file (a pair form) is for {', '.join(PAIR_FAMILIES)}, not {family!r}",
        )
    roots = {"data_root": data_root, "image_root": image_root}
    if family == "caption" and annotations is None:
        samples = _read_caption(path, **roots)
    else:
        records = _question_records(path) if annotations is not None else read_records(path)
        records = with_images(records) if skip_text_only else records
        if annotations is None:
            samples = eval_records(family, records, source=path, **roots)
        elif family == "caption":
            samples = _read_caption_pair(records, path, annotations, **roots)
        elif family == "vqa10":
            samples = _read_vqa_pair(records, path, annotations, **roots)
        else:
            samples = _read_keyed_pair(family, records, path, annotations, **roots)
    if not samples:
        raise DataError(path, "no evaluation samples")
    _check_unique_ids(samples, path)
    return samples


def _record_image(
    record: dict, line: int | None, prefix: str, *, source: Path, roots: tuple[Path, Path], directories: dict
) -> Path:
    """The image a question record's ``image`` names, resolved under the image root inside the data root."""
    data_root, image_root = roots
    return resolve_image(
        data_root,
        image_root,
        record.get("image"),
        source=source,
        line=line,
        field=f"{prefix}image",
        directories=directories,
    )


def eval_records(family: str, records: Records, *, source: Path, data_root: Path, image_root: Path) -> list[EvalSample]:
    """Evaluation samples from ``(line, prefix, record)`` triples in the family's record form (its JSONL fields;
    for captions ``image`` and a list of ``captions``), each validated; errors name ``source`` with the line or
    the prefixed field."""
    samples, directories = [], {}
    for line, prefix, record in records:
        image = _record_image(
            record, line, prefix, source=source, roots=(data_root, image_root), directories=directories
        )
        fields, references = _RECORD_READERS[family](record, source, line, prefix)
        samples.append(
            EvalSample(
                id=_record_id(record, line, prefix, source), image=image, prompt_fields=fields, references=references
            )
        )
    return samples


def _record_id(record: dict, line: int | None, prefix: str, path: Path) -> str:
    for key in ("question_id", "id"):
        if key in record:
            return str(require(record, key, (str, int), path=path, line=line, prefix=prefix))
    return str(line) if line is not None else prefix.strip("[].")


def _check_unique_ids(samples: list[EvalSample], path: Path) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise DataError(path, f"sample id {sample.id!r} appears more than once", field="id")
        seen.add(sample.id)


def _coco_captions(path: Path) -> tuple[dict, dict[str, list[str]]]:
    """A COCO caption JSON and its references by image_id (as text)."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise DataError(path, "expected a COCO-style object with 'images' and 'annotations'")
    annotations = require(document, "annotations", list, path=path, line=None)
    captions: dict[str, list[str]] = {}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            raise DataError(path, "expected an object with 'image_id' and a string 'caption'", field=where)
        captions.setdefault(str(annotation.get("image_id")), []).append(annotation["caption"])
    return document, captions


def _read_caption_pair(
    records: Records, questions: Path, annotations: Path, *, data_root: Path, image_root: Path
) -> list[EvalSample]:
    """MCITlib's caption pair: a question list (``question_id``, ``image``, ``text`` per entry, as
    ``llava/eval/CoIN/model_others.py`` reads it) and a COCO caption JSON whose ``image_id`` k (from 1) holds the
    references of the k-th question: ``eval_caption.py`` numbers the replies 1..N in the question file's order
    and scores them with pycocotools against that file (Ghy0501/MCITlib@2956dfd:LoRA-FT/llava/eval/CoIN/)."""
    references = _coco_captions(annotations)[1]
    samples, directories = [], {}
    for position, (line, prefix, record) in enumerate(records, start=1):
        image = _record_image(
            record, line, prefix, source=questions, roots=(data_root, image_root), directories=directories
        )
        if not references.get(str(position)):
            raise DataError(
                annotations,
                f"image_id {position} (question {position} of {questions}) has no caption annotation",
                field="annotations",
            )
        samples.append(
            EvalSample(
                id=_record_id(record, line, prefix, questions),
                image=image,
                prompt_fields=_question(record, questions, line, prefix),
                references={"references": references[str(position)]},
            )
        )
    return samples


def _read_caption(path: Path, *, data_root: Path, image_root: Path) -> list[EvalSample]:
    document, captions = _coco_captions(path)
    images = require(document, "images", list, path=path, line=None)
    samples, directories = [], {}
    for index, entry in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(path, "expected an object with 'id' and 'file_name'", field=where)
        # The reference's caption reader takes 'file_name', else 'image' (eval/caption/evaluate_caption.py).
        key = "file_name" if "file_name" in entry or "image" not in entry else "image"
        image = resolve_image(
            data_root,
            image_root,
            entry.get(key),
            source=path,
            line=None,
            field=f"{where}.{key}",
            directories=directories,
        )
        references = captions.get(str(entry["id"]))
        if not references:
            raise DataError(path, f"image id {entry['id']!r} has no caption annotation", field=where)
        samples.append(EvalSample(id=str(entry["id"]), image=image, references={"references": references}))
    return samples


def _ten_answers(answers: list, path: Path, line: int | None, field: str) -> list[str]:
    """Ten annotator answers, as strings or as VQAv2 answer objects ``{"answer": str, ...}``."""
    texts = [item.get("answer") if isinstance(item, dict) else item for item in answers]
    if len(texts) != 10 or not all(isinstance(text, str) for text in texts):
        raise DataError(
            path,
            f"expected 10 answer strings (or objects with a string 'answer'), got {len(answers)} items",
            line=line,
            field=field,
        )
    return texts


def _read_vqa10(record: dict, path: Path, line: int | None, prefix: str) -> tuple[dict, dict]:
    question = _question(record, path, line, prefix)
    answers = require(record, "answers", list, path=path, line=line, prefix=prefix)
    return question, {"answers": _ten_answers(answers, path, line, f"{prefix}answers")}


def _question(record: dict, path: Path, line: int | None, prefix: str) -> dict:
    """The prompt field of a question record: ``question`` (D-MoLE), or ``text`` (LLaVA's and CoIN's question
    files, where it is the whole prompt, instruction included: such a task's prompt is ``{text}``). An image
    placeholder in a ``text`` is removed, as CoIN's model_vqa_science.py does: the model's processor places the
    image."""
    if "text" in record and "question" not in record:
        text = require(record, "text", str, path=path, line=line, prefix=prefix)
        return {"text": text.replace(IMAGE_PLACEHOLDER, "").strip() if IMAGE_PLACEHOLDER in text else text}
    return {"question": require(record, "question", str, path=path, line=line, prefix=prefix)}


def _read_vqa_pair(
    records: Records, questions: Path, annotations: Path, *, data_root: Path, image_root: Path
) -> list[EvalSample]:
    """The VQA pair form: questions (with their images) in one file, ten answers per question in an annotations
    JSON matched by question_id: VQAv2's ``{"annotations": [{"question_id", "answers": [{"answer", ...}] * 10}]}``
    or TextVQA's ``{"data": [{"question_id", "answers": [str] * 10, ...}]}`` (TextVQA_0.5.1_val.json, which CoIN's
    eval_textvqa.py scores with).

    The questions (``_question_records``) carry ``image``, ``question_id`` and ``question`` (the reference's
    ``vizwiz_val.jsonl``) or ``text`` (CoIN's ``TextVQA/val.json``)."""
    answers = _annotation_answers(annotations)
    joined = _joined(records, questions, answers, annotations, data_root=data_root, image_root=image_root)
    return [
        EvalSample(id=question_id, image=image, prompt_fields=fields, references={"answers": entry})
        for question_id, image, fields, entry in joined
    ]


def _read_keyed_pair(
    family: str,
    records: Records,
    questions: Path,
    annotations: Path,
    *,
    data_root: Path,
    image_root: Path,
) -> list[EvalSample]:
    """The keyed pair form of ``short`` and ``choice``: questions (with their images) in one file, each question's
    answer fields in a JSON object keyed by its question_id, in the family's record form (``question`` and
    ``answer``; for choice also ``choices``, ``answer`` the gold index). These are the original datasets' files
    that CoIN scores with: ScienceQA's ``problems.json`` (eval_science_qa.py) and GQA's
    ``testdev_balanced_questions.json`` (eval_gqa.py). The prompt comes from the questions file."""
    entries = read_json(annotations)
    if not isinstance(entries, dict):
        raise DataError(annotations, "expected a JSON object keyed by question id")
    samples = []
    for question_id, image, fields, entry in _joined(
        records, questions, entries, annotations, data_root=data_root, image_root=image_root
    ):
        if not isinstance(entry, dict):
            raise DataError(annotations, f"expected an object, got {type(entry).__name__}", field=question_id)
        _, references = _RECORD_READERS[family](entry, annotations, None, f"{question_id}.")
        samples.append(EvalSample(id=question_id, image=image, prompt_fields=fields, references=references))
    return samples


def _joined(
    records: Records,
    questions: Path,
    answers: dict,
    annotations: Path,
    *,
    data_root: Path,
    image_root: Path,
) -> Iterator[tuple[str, Path, dict, object]]:
    """Each question's id (as text), image, prompt fields and its entry in ``answers`` (keyed by question id as
    text); a question without an entry is an error."""
    directories: dict[Path, Path] = {}
    for line, prefix, record in records:
        fields = _question(record, questions, line, prefix)
        raw_id = _field(record, "question_id", (str, int), questions, line, prefix)
        question_id = str(raw_id)
        if "image" not in record and "image_id" in record:
            raise DataError(
                questions,
                "missing (an image_id alone does not locate an image file; the questions need an 'image' path)",
                line=line,
                field=f"{prefix}image",
            )
        image = _record_image(
            record, line, prefix, source=questions, roots=(data_root, image_root), directories=directories
        )
        if question_id not in answers:
            raise DataError(
                questions,
                f"question {raw_id!r} has no entry in {annotations}",
                line=line,
                field=f"{prefix}question_id",
            )
        yield question_id, image, fields, answers[question_id]


def _field(record: dict, field: str, kind, path: Path, line: int | None, prefix: str) -> object:
    try:
        return require(record, field, kind, path=path, line=line)
    except DataError as error:
        raise DataError(path, error.reason, line=line, field=f"{prefix}{field}") from None


def _question_records(path: Path) -> Iterator[tuple[int | None, str, dict]]:
    """``(line, field prefix, record)`` for each question of a JSONL, a JSON list (LLaVA's and CoIN's question
    files) or a VQAv2-style JSON object ``{"questions": [...]}``."""
    if path.suffix == ".jsonl" or holds_a_list(path):
        yield from read_records(path)
        return
    document = read_json(path)
    entries = document.get("questions") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DataError(path, "expected a JSONL of questions, a JSON list or a JSON object with a 'questions' list")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(path, "expected an object", field=f"questions[{index}]")
        yield None, f"questions[{index}].", entry


def _annotation_answers(path: Path) -> dict[str, list[str]]:
    """question_id (as text) -> its ten answers, from VQAv2's ``annotations`` or TextVQA's ``data`` list."""
    document = read_json(path)
    key = next((k for k in ("annotations", "data") if isinstance(document, dict) and k in document), None)
    entries = document[key] if key else None
    if not isinstance(entries, list):
        raise DataError(path, "expected a VQA annotations object with an 'annotations' (or TextVQA's 'data') list")
    answers: dict[str, list[str]] = {}
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict):
            raise DataError(path, "expected an object with 'question_id' and 'answers'", field=where)
        question_id = _field(entry, "question_id", (str, int), path, None, f"{where}.")
        texts = _ten_answers(_field(entry, "answers", list, path, None, f"{where}."), path, None, f"{where}.answers")
        if str(question_id) in answers:
            raise DataError(
                path, f"question_id {question_id!r} is annotated more than once", field=f"{where}.question_id"
            )
        answers[str(question_id)] = texts
    return answers


def _read_short(record: dict, path: Path, line: int | None, prefix: str) -> tuple[dict, dict]:
    question = _question(record, path, line, prefix)
    answer = require(record, "answer", (str, list), path=path, line=line, prefix=prefix)
    answers = [answer] if isinstance(answer, str) else answer
    if not answers or not all(isinstance(item, str) for item in answers):
        raise DataError(path, "expected a string or a non-empty list of strings", line=line, field=f"{prefix}answer")
    return question, {"answer": answers}


def _read_choice(record: dict, path: Path, line: int | None, prefix: str) -> tuple[dict, dict]:
    question = require(record, "question", str, path=path, line=line, prefix=prefix)
    choices = require(record, "choices", list, path=path, line=line, prefix=prefix)
    if not 2 <= len(choices) <= 5 or not all(isinstance(choice, str) for choice in choices):
        raise DataError(
            path, f"expected 2 to 5 option strings, got {len(choices)} items", line=line, field=f"{prefix}choices"
        )
    answer = require(record, "answer", int, path=path, line=line, prefix=prefix)
    if not 0 <= answer < len(choices):
        raise DataError(
            path, f"index {answer} is outside the {len(choices)} choices", line=line, field=f"{prefix}answer"
        )
    return {"question": question, "choices": choices}, {"choices": choices, "answer": answer}


def _read_grounding(record: dict, path: Path, line: int | None, prefix: str) -> tuple[dict, dict]:
    if "answer_bbox" in record:
        return _read_coin_grounding(record, path, line, prefix)
    sent = require(record, "sent", str, path=path, line=line, prefix=prefix)
    knowledge = (
        require(record, "knowledge", str, path=path, line=line, prefix=prefix) if "knowledge" in record else None
    )
    width = require(record, "width", (int, float), path=path, line=line, prefix=prefix)
    height = require(record, "height", (int, float), path=path, line=line, prefix=prefix)
    box = require(record, "bbox", list, path=path, line=line, prefix=prefix)
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise DataError(path, "expected four numbers [x1, y1, x2, y2]", line=line, field=f"{prefix}bbox")
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise DataError(
            path,
            f"box {box} is not a well-formed box inside the {width}x{height} image",
            line=line,
            field=f"{prefix}bbox",
        )
    fields = {"sent": sent} if knowledge is None else {"sent": sent, "knowledge": knowledge}
    return fields, {"bbox": [float(v) for v in box], "width": float(width), "height": float(height)}


def _read_coin_grounding(record: dict, path: Path, line: int | None, prefix: str) -> tuple[dict, dict]:
    """CoIN's grounding question: ``text`` (the prompt), ``answer_bbox`` ("[x1, y1, x2, y2]", 0-1 in the square
    the image is padded to, LLaVA's --image_aspect_ratio pad) and ``size`` (the image's sides), as
    eval_grounding.py reads them. The family's pixel box is that square's: the sides ``max(size)`` (what the
    script scales both boxes by), so a reply in the same 0-1 square coordinates is read in kind. ``answer_bbox``
    and ``size`` are kept for CoIN's own rule (stages/metrics/coin_rules.py)."""
    fields = _question(record, path, line, prefix)
    text = require(record, "answer_bbox", str, path=path, line=line, prefix=prefix)
    size = require(record, "size", list, path=path, line=line, prefix=prefix)
    if len(size) != 2 or not all(_positive(v) for v in size):
        raise DataError(path, "expected the image's two sides, positive numbers", line=line, field=f"{prefix}size")
    try:  # eval_grounding.py: brackets deleted, then split on commas
        box = [float(v) for v in text.replace("[", "").replace("]", "").split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not (0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1):
        raise DataError(
            path, f"expected a box '[x1, y1, x2, y2]' within 0-1, got {text!r}", line=line, field=f"{prefix}answer_bbox"
        )
    side = float(max(size))
    references = {"bbox": [v * side for v in box], "width": side, "height": side, "answer_bbox": text, "size": size}
    return fields, references


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _read_captions(record: dict, path: Path, line: int | None, prefix: str) -> tuple[dict, dict]:
    captions = require(record, "captions", list, path=path, line=line, prefix=prefix)
    if not captions or not all(isinstance(caption, str) and caption.strip() for caption in captions):
        raise DataError(path, "expected a non-empty list of caption strings", line=line, field=f"{prefix}captions")
    return {}, {"references": captions}


_RECORD_READERS: dict[str, Callable[[dict, Path, int | None, str], tuple[dict, dict]]] = {
    "caption": _read_captions,  # the record form `dmole import` converts rows to; caption files are COCO JSON
    "vqa10": _read_vqa10,
    "short": _read_short,
    "choice": _read_choice,
    "grounding": _read_grounding,
}
