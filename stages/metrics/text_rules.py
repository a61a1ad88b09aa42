"""Four plain rules for text answers, for re-scoring one prediction set under several readings of "right".

- ``strict``: the reply equals a gold answer character for character (surrounding whitespace aside).
- ``normalised``: equal after EvalAI's VQA normalisation (vqa.py: lower case, punctuation, articles, number words,
  contractions).
- ``numeric``: where the gold answer is a number (digits, or a number word up to ten), the first number in the
  reply is within ±1 of it; a gold answer that is not a number is graded as ``normalised``.
- ``token-f1``: SQuAD's token F1 (squad v2.0's ``compute_f1``: the harmonic mean of token precision and recall over
  the multiset of shared tokens; 1 when both token lists are empty, 0 when one is) on the normalised answers'
  whitespace tokens.

Each rule takes a reply and one gold answer and returns 0-1; a sample with several gold answers (ten VQA answers,
caption references, a multiple-choice option as its letter and its text) scores its best; an option's letter is
read as a letter, not through the VQA normalisation (which would delete "A" as an article), as SQuAD takes the
maximum over its gold answers. Grounding boxes are no text answers: those rules do not apply there.
"""

from __future__ import annotations

import re
from collections import Counter

from . import MetricError
from .choice import option_letters
from .vqa import NUMBERS, normalize_vqa_answer

NUMERIC_TOLERANCE = 1.0
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[a-z]+")


def read_number(text: str, *, whole: bool = False) -> float | None:
    """The first number in ``text`` (digits, thousands commas dropped, or a number word), or None; with ``whole``
    only when the whole text (a trailing period aside) is that number."""
    text = _WORD.sub(lambda word: NUMBERS.get(word.group(), word.group()), text.lower().replace(",", "")).strip()
    match = _NUMBER.fullmatch(text.rstrip(".")) if whole else _NUMBER.search(text)
    return None if match is None else float(match.group())


def strict(reply: str, gold: str) -> float:
    return float(reply.strip() == gold.strip())


def normalised(reply: str, gold: str) -> float:
    return float(normalize_vqa_answer(reply) == normalize_vqa_answer(gold))


def numeric(reply: str, gold: str) -> float:
    target = read_number(gold, whole=True)
    if target is None:
        return normalised(reply, gold)
    read = read_number(reply)
    return float(read is not None and abs(read - target) <= NUMERIC_TOLERANCE)


def token_f1(reply: str, gold: str) -> float:
    predicted, expected = normalize_vqa_answer(reply).split(), normalize_vqa_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


RULES = {"strict": strict, "normalised": normalised, "numeric": numeric, "token-f1": token_f1}


def gold_answers(sample: dict, rule: str) -> list[str]:
    """The text answers a sample of any family but grounding holds."""
    if "references" in sample:  # caption
        return list(sample["references"])
    if "answers" in sample:  # vqa10
        return list(sample["answers"])
    answer = sample.get("answer")
    if "choices" in sample and isinstance(answer, int):  # choice: the gold option's text (its letter: `score`)
        return [sample["choices"][answer]]
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, list) and answer:
        return list(answer)
    raise MetricError(
        f"the {rule!r} rule grades text answers; this sample has none ('answer', 'answers' or 'references')"
    )


_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:]?")


def letter_right(rule: str, reply: str, sample: dict) -> bool:
    """Whether ``reply`` names a multiple-choice sample's gold option by its letter: the letter itself under
    ``strict``, else the letter in any case, bracketed or followed by a period or colon ("b", "(B)", "B."). The
    letter is not read through the VQA normalisation, which deletes "a" as an article."""
    answer = sample.get("answer")
    if "choices" not in sample or not isinstance(answer, int):
        return False
    letter = option_letters(len(sample["choices"]))[answer]
    if rule == "strict":
        return reply.strip() == letter
    match = _LETTER.fullmatch(reply.strip())
    return match is not None and match.group(1).upper() == letter


def score(rule: str, reply: str, sample: dict) -> float:
    """``rule``'s 0-1 score of ``reply``: its best over the sample's gold answers (a multiple-choice option is
    right by its letter or its text)."""
    if letter_right(rule, reply, sample):
        return 1.0
    return max(RULES[rule](reply, gold) for gold in gold_answers(sample, rule))


def parsed(rule: str, reply: str) -> str | None:
    """What ``rule`` reads of a reply: the reply, its normalised form, or the number it finds (None if none)."""
    if rule == "strict":
        return reply.strip()
    if rule == "numeric":
        number = read_number(reply)
        return None if number is None else f"{number:g}"
    return normalize_vqa_answer(reply)
