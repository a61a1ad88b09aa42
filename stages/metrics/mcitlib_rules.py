"""MCITlib's scoring rules (Ghy0501/MCITlib, ``<method>/llava/eval/CoIN/``; every method's copy is the same).

UCIT (``scripts/*/Eval_UCIT/eval_*.sh``):

- ImageNet-R, ArxivQA, IconQA, CLEVR-Math: ``eval_deepseek_r1.py`` (its scoring part; the LLM judge is commented
  out): right when ``reply.upper() == answer.upper()``, the whole reply, nothing stripped.
- VizWiz-caption, Flickr30k: ``eval_caption.py``: pycocoevalcap's COCOEvalCap on the references, then the mean of
  BLEU-1..4, METEOR, ROUGE-L and CIDEr, each × 100 (stages/metrics/coco_caption.py).

MLLM-DCL (``scripts/*/Eval_MLLM_DCL/eval_*.sh``); a reply containing "Unanswerable" scores 0 in each:

- RS, AD: ``eval_ai2d.py``: lower-cased; a gold answer with a space must occur in the reply; one without (its
  periods deleted) must occur in a reply without spaces, or in one with spaces as " gold", "gold ", "gold." or
  "gold,".
- Med: ``eval_pvqa.py``: the lower-cased gold answer occurs in the lower-cased reply.
- Sci: ``eval_sci.py``: for images named AI2D_*, TQA_*, VQA_*, SciVerse_*, lower-cased equality; otherwise (MapQA)
  a "Which states" question scores the share of the gold's comma-separated states among the reply's, and any
  other question needs the gold in the reply.
- Fin: ``eval_finvis.py``: the lower-cased reply without spaces and periods equals the lower-cased gold.
"""

from __future__ import annotations

from . import MetricError
from .coco_caption import METRICS, coco_caption_scores

UNANSWERABLE = "Unanswerable"
SCI_EXACT_SOURCES = {"AI2D", "TQA", "VQA", "SciVerse"}


def exact(reply: str, answer: str) -> float:
    return float(reply.upper() == answer.upper())


def ai2d(reply: str, answer: str) -> float:
    if UNANSWERABLE in reply:
        return 0.0
    pred, gold = reply.lower(), answer.lower()
    if " " in gold:
        return float(gold in pred)
    gold = gold.replace(".", "")
    if " " in pred:
        return float(any(form in pred for form in (" " + gold, gold + " ", gold + ".", gold + ",")))
    return float(gold in pred)


def pvqa(reply: str, answer: str) -> float:
    return 0.0 if UNANSWERABLE in reply else float(answer.lower() in reply.lower())


def sci(reply: str, answer: str, image: str, prompt: str) -> float:
    if UNANSWERABLE in reply:
        return 0.0
    pred, gold = reply.lower(), answer.lower()
    if image.rsplit("/", maxsplit=1)[-1].split("_", maxsplit=1)[0] in SCI_EXACT_SOURCES:
        return float(gold == pred)
    if "Which states" in prompt:
        states = gold.split(",")
        return sum(state in pred.split(",") for state in states) / len(states)
    return float(gold in pred)


def finvis(reply: str, answer: str) -> float:
    if UNANSWERABLE in reply:
        return 0.0
    return float(reply.lower().replace(" ", "").replace(".", "") == answer.lower())


def caption(
    replies: list[str], references: list[list[str]], *, tokenizer: str = "ptb", meteor: str = "java"
) -> tuple[float, list[float], dict[str, float]]:
    """eval_caption.py's Average (0-100), a per-sample stand-in (the mean of the seven per-sample scores × 100;
    the corpus BLEU and METEOR are not means of these), and the seven corpus metrics × 100."""
    corpus, samples = coco_caption_scores(replies, references, tokenizer=tokenizer, meteor=meteor)
    metrics = {name: 100.0 * corpus[name] for name in METRICS}
    per_sample = [100.0 * sum(samples[name][k] for name in METRICS) / len(METRICS) for k in range(len(replies))]
    return sum(metrics.values()) / len(metrics), per_sample, metrics


def _field(sample: dict, name: str, rule: str):
    if name not in sample:
        raise MetricError(f"MCITlib's {rule!r} rule needs the sample field {name!r}")
    return sample[name]


# rule name -> (reply, sample) -> 0-1; "mcitlib-caption" scores a whole set (caption above)
RULES = {
    "mcitlib-exact": lambda r, s: exact(r, _field(s, "answer", "exact")),
    "mcitlib-ai2d": lambda r, s: ai2d(r, _field(s, "answer", "ai2d")),
    "mcitlib-pvqa": lambda r, s: pvqa(r, _field(s, "answer", "pvqa")),
    "mcitlib-sci": lambda r, s: sci(
        r, _field(s, "answer", "sci"), _field(s, "image", "sci"), s.get("prompt", s.get("question", ""))
    ),
    "mcitlib-finvis": lambda r, s: finvis(r, _field(s, "answer", "finvis")),
}
CAPTION_RULE = "mcitlib-caption"
# MCITlib's task folders -> rule
TASK_RULES = {
    "ImageNet-R": "mcitlib-exact",
    "ArxivQA": "mcitlib-exact",
    "IconQA": "mcitlib-exact",
    "CLEVR-Math": "mcitlib-exact",
    "VizWiz": CAPTION_RULE,
    "Flickr30k": CAPTION_RULE,
    "RS": "mcitlib-ai2d",
    "AD": "mcitlib-ai2d",
    "Med": "mcitlib-pvqa",
    "Sci": "mcitlib-sci",
    "Fin": "mcitlib-finvis",
}
