"""CoIN's scoring rule of each of its eight tasks, one function per rule (zackschen/CoIN, ETrain/Eval/LLaVA/CoIN/).

Each rule takes the model's reply and the sample's fields as CoIN's test files name them, and returns 0-1.
A script divides the sum by the number of replies, so a reply it skips still counts in the total.

- ScienceQA (``eval_science_qa.py``): the reply is a letter when it is one of A-E, or starts "X. "; otherwise the
  first one-character word, upper-cased. Right when that letter is the gold index's among the sample's options.
- TextVQA (``eval_textvqa.py`` with ``m4c_evaluator.py``'s TextVQAAccuracyEvaluator): VQA soft accuracy over
  10 answers after EvalAI normalisation, of which only the first 32 periods are deleted (see vqa.py).
- ImageNet (``eval_ImagetNet.py``): right when the gold label is in the reply or the reply in the label, case
  and all (so an empty reply is right).
- GQA (``convert_gqa_for_eval.py``, then ``eval_gqa.py``): the reply with trailing periods stripped and lower-
  cased equals the gold answer.
- VizWiz, VQAv2 (``eval_vizwiz.py``, ``eval_vqav2.py``): upper-cased reply equals upper-cased gold answer.
- Grounding (``eval_grounding.py``): IoU > 0.5 between the reply's box and ``answer_bbox``, both in the padded
  square's 0-1 coordinates. The script deletes every bracket and then drops the first and the last character
  before splitting on commas, so "[0.12, 0.34, 0.56, 0.78]" is read as 0.12, 0.34, 0.56, 0.7; a reply that does
  not give four numbers that way scores 0. Kept as it is: it is what CoIN's published numbers were scored with.
- OCR-VQA (``eval_ocrvqa.py``): a reply containing "Unanswerable" scores 0; otherwise lower-cased equality.
"""

from __future__ import annotations

import re

from . import MetricError
from .vqa import vqa_soft_accuracy

OPTIONS = ["A", "B", "C", "D", "E"]
_ONE_CHARACTER_WORD = re.compile(r"\b(\w)\b")
M4C_PERIOD_LIMIT = 32


def scienceqa_letter(reply: str) -> str:
    """The letter eval_science_qa.py reads from a reply ("FAILED" when it finds none)."""
    if reply in OPTIONS:
        return reply
    if len(reply) >= 3 and reply[0] in OPTIONS and reply[1:3] == ". ":
        return reply[0]
    found = _ONE_CHARACTER_WORD.findall(reply)
    return found[0].upper() if found else "FAILED"


def scienceqa(reply: str, choices: list[str], answer: int) -> float:
    letter = scienceqa_letter(reply)
    index = OPTIONS.index(letter) if letter in OPTIONS[: len(choices)] else -1
    return float(index == answer)


def textvqa(reply: str, answers: list[str]) -> float:
    if len(answers) != 10:
        raise MetricError(f"CoIN's TextVQA evaluator asserts 10 answers, got {len(answers)}")
    return vqa_soft_accuracy(reply, answers, period_limit=M4C_PERIOD_LIMIT)


def imagenet(reply: str, answer: str) -> float:
    return float(answer in reply or reply in answer)


def gqa(reply: str, answer: str) -> float:
    return float(reply.rstrip(".").lower() == answer)


def upper_exact(reply: str, answer: str) -> float:
    return float(reply.upper() == answer.upper())


def grounding_box(reply: str) -> list[float] | None:
    """The four numbers eval_grounding.py reads from a reply, or None where it skips the reply."""
    text = reply.replace("[", "").replace("]", "")
    try:
        box = [float(x) for x in text[1:-1].split(",")]
    except ValueError:
        return None
    return box if len(box) == 4 else None


def _iou(a: list[float], b: list[float]) -> float:
    """calculate_iou of eval_grounding.py: boxes x1, y1, x2, y2; 0 when the union is not positive."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0


def grounding(reply: str, answer_bbox: str, size: list[float] | None = None) -> float:
    """IoU > 0.5; both boxes scaled by the longer image side first, as the script does (1 without ``size``)."""
    box = grounding_box(reply)
    if box is None:
        return 0.0
    gold = [float(x) for x in answer_bbox.replace("[", "").replace("]", "").split(",")]
    scale = max(size) if size else 1
    return float(_iou([x * scale for x in box], [x * scale for x in gold]) > 0.5)


def ocrvqa(reply: str, answer: str) -> float:
    if "Unanswerable" in reply:
        return 0.0
    return float(reply.lower() == answer.lower())


def _field(sample: dict, name: str, rule: str):
    if name not in sample:
        raise MetricError(f"CoIN's {rule!r} rule needs the sample field {name!r}")
    return sample[name]


# rule name -> (reply, sample) -> 0-1
RULES = {
    "coin-scienceqa": lambda r, s: scienceqa(r, _field(s, "choices", "scienceqa"), _field(s, "answer", "scienceqa")),
    "coin-textvqa": lambda r, s: textvqa(r, _field(s, "answers", "textvqa")),
    "coin-imagenet": lambda r, s: imagenet(r, _field(s, "answer", "imagenet")),
    "coin-gqa": lambda r, s: gqa(r, _field(s, "answer", "gqa")),
    "coin-vizwiz": lambda r, s: upper_exact(r, _field(s, "answer", "vizwiz")),
    "coin-vqav2": lambda r, s: upper_exact(r, _field(s, "answer", "vqav2")),
    "coin-grounding": lambda r, s: grounding(r, _field(s, "answer_bbox", "grounding"), s.get("size")),
    "coin-ocrvqa": lambda r, s: ocrvqa(r, _field(s, "answer", "ocrvqa")),
}
# CoIN's task names (its Instructions folders) -> rule
TASK_RULES = {
    "ScienceQA": "coin-scienceqa",
    "TextVQA": "coin-textvqa",
    "ImageNet": "coin-imagenet",
    "GQA": "coin-gqa",
    "VizWiz": "coin-vizwiz",
    "Grounding": "coin-grounding",
    "VQAv2": "coin-vqav2",
    "OCRVQA": "coin-ocrvqa",
}
