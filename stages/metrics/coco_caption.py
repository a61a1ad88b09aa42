"""The COCO caption metrics that pycocoevalcap's ``COCOEvalCap.evaluate`` reports, SPICE aside.

What ``pycocoevalcap/eval.py`` does, per metric: the references and the predictions are PTB-tokenised (two calls
of the Stanford tokenizer: references, then predictions), then scored with ``Bleu(4)`` (corpus BLEU-1..4,
"closest" reference length), ``Meteor()`` (meteor-1.5.jar's corpus score), ``Rouge()`` (the mean over images
of ROUGE-L, β = 1.2) and ``Cider()`` (CIDEr-D with IDF from these references). Here the same pycocoevalcap
scorers run on the same tokens; only SPICE, which no grader of the field averages in, is left out.

Without java, ``tokenizer="ptb-python"`` (stages/metrics/ptb_python.py) and ``meteor="python"``
(stages/metrics/meteor_python.py) stand in; docs/metrics.md gives their measured difference.
"""

from __future__ import annotations

import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from . import MetricError
from .caption import tokenize_captions
from .meteor_python import meteor_python

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
METEORS = ("java", "python")


def java_present() -> bool:
    """Whether java is on PATH (the PTB tokenizer and meteor-1.5.jar need it)."""
    return shutil.which("java") is not None


def _meteor_java(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap's Meteor (meteor-1.5.jar through java)."""
    from pycocoevalcap.meteor.meteor import Meteor

    if not java_present():
        raise MetricError("METEOR from meteor-1.5.jar needs java on PATH; use meteor='python' without it")
    score, scores = Meteor().compute_score(gts, res)
    return float(score), [float(s) for s in scores]


def coco_caption_scores(
    predictions: list[str], references: list[list[str]], *, tokenizer: str = "ptb", meteor: str = "java"
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus scores (0-1, CIDEr unbounded) of METRICS, and each sample's, keyed by metric name."""
    if len(predictions) != len(references):
        raise MetricError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions or any(not refs for refs in references):
        raise MetricError("caption metrics need at least one sample, each with at least one reference")
    if meteor not in METEORS:
        raise MetricError(f"unknown METEOR implementation {meteor!r}; choose one of {METEORS}")
    flat = tokenize_captions([ref for refs in references for ref in refs], tokenizer)
    preds = tokenize_captions(list(predictions), tokenizer)
    it = iter(flat)
    gts = {i: [next(it) for _ in refs] for i, refs in enumerate(references)}
    res = {i: [pred] for i, pred in enumerate(preds)}
    corpus, samples = {}, {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"Bleu_{n + 1}"], samples[f"Bleu_{n + 1}"] = float(bleu[n]), [float(s) for s in bleu_each[n]]
    if meteor == "java":
        corpus["METEOR"], samples["METEOR"] = _meteor_java(gts, res)
    else:
        ids = sorted(gts)
        corpus["METEOR"], samples["METEOR"] = meteor_python([res[i][0] for i in ids], [gts[i] for i in ids])
    rouge, rouge_each = Rouge().compute_score(gts, res)
    corpus["ROUGE_L"], samples["ROUGE_L"] = float(rouge), [float(s) for s in rouge_each]
    cider, cider_each = Cider().compute_score(gts, res)
    corpus["CIDEr"], samples["CIDEr"] = float(cider), [float(s) for s in cider_each]
    return corpus, samples
