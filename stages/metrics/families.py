"""Registry from task family to scorer, with one entry point for evaluation code.

Sample fields per family: caption `references`; vqa10 `answers`; short `answer`;
choice `choices` and `answer` (gold index); grounding `bbox` (pixel xyxy), `width`, `height`.
"""

from collections.abc import Callable

from . import MetricError
from .caption import cider_d
from .choice import choice_accuracy, parse_choice
from .grounding import grounding_hit, parse_box, to_pixels
from .short import exact_match
from .vqa import normalize_vqa_answer, vqa_soft_accuracy

Scored = tuple[float, list[float], list[str | None]]


def _field(sample: dict, name: str, family: str):
    """sample[name], or a MetricError naming the family that needs it."""
    if name not in sample:
        raise MetricError(f"a {family!r} sample needs the field {name!r}")
    return sample[name]


def _per_sample(scores: list[float], parsed: list[str | None]) -> Scored:
    """Scale 0/1-style scores to 0-100 and average them."""
    per_sample = [100.0 * s for s in scores]
    return sum(per_sample) / len(per_sample), per_sample, parsed


def _caption(preds: list[str], samples: list[dict], tokenizer: str) -> Scored:
    """CIDEr-D; a caption is scored whole, so the parsed prediction is the raw one."""
    refs = [_field(s, "references", "caption") for s in samples]
    score, per_sample = cider_d(preds, refs, tokenizer)
    return score, per_sample, list(preds)


def _vqa10(preds: list[str], samples: list[dict], _tokenizer: str) -> Scored:
    """VQA soft accuracy; parsed = the normalised answer."""
    answers = [_field(s, "answers", "vqa10") for s in samples]
    scores = [vqa_soft_accuracy(p, a) for p, a in zip(preds, answers)]
    return _per_sample(scores, [normalize_vqa_answer(p) for p in preds])


def _short(preds: list[str], samples: list[dict], _tokenizer: str) -> Scored:
    """Exact match; parsed = the stripped, lower-cased prediction."""
    refs = [_field(s, "answer", "short") for s in samples]
    scores = [exact_match(p, r) for p, r in zip(preds, refs)]
    return _per_sample(scores, [p.strip().lower() for p in preds])


def _choice(preds: list[str], samples: list[dict], _tokenizer: str) -> Scored:
    """Letter accuracy; parsed = the chosen letter or None."""
    choices = [_field(s, "choices", "choice") for s in samples]
    golds = [_field(s, "answer", "choice") for s in samples]
    scores = [choice_accuracy(p, c, g) for p, c, g in zip(preds, choices, golds)]
    return _per_sample(scores, [parse_choice(p, c) for p, c in zip(preds, choices)])


def _box_text(box: tuple[float, float, float, float]) -> str:
    """A pixel box as "[x1, y1, x2, y2]" with one decimal."""
    return "[" + ", ".join(f"{v:.1f}" for v in box) + "]"


def _grounding(preds: list[str], samples: list[dict], _tokenizer: str) -> Scored:
    """Precision at IoU ≥ 0.5; parsed = the predicted pixel box or None."""
    scores, parsed = [], []
    for pred, sample in zip(preds, samples):
        gold, width, height = (_field(sample, k, "grounding") for k in ("bbox", "width", "height"))
        box = parse_box(pred)
        scores.append(grounding_hit(pred, gold, width, height))
        parsed.append(None if box is None else _box_text(to_pixels(box, width, height)))
    return _per_sample(scores, parsed)


FAMILIES: dict[str, Callable[[list[str], list[dict], str], Scored]] = {
    "caption": _caption,
    "vqa10": _vqa10,
    "short": _short,
    "choice": _choice,
    "grounding": _grounding,
}


def score_family(family: str, predictions: list[str], samples: list[dict], caption_tokenizer: str = "simple") -> Scored:
    """(score 0-100, per-sample scores 0-100, parsed predictions) for one task family.

    `caption_tokenizer` ("simple", "ptb" or "ptb-python") is used by the caption family only.
    """
    if family not in FAMILIES:
        raise MetricError(f"unknown task family {family!r}; known: {sorted(FAMILIES)}")
    if len(predictions) != len(samples):
        raise MetricError(f"{len(predictions)} predictions but {len(samples)} samples")
    if not samples:
        raise MetricError(f"no {family!r} samples to score")
    return FAMILIES[family](predictions, samples, caption_tokenizer)
