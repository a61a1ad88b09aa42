"""How far the Java-free caption metrics are from java's, on shared captions: METEOR and MCITlib's caption average.

    python bench/meteor_agreement.py PREDICTIONS.json REFERENCES.json [--out result.json]

Both files are COCO caption results (a list of {"image_id", "caption"}); the predictions are scored against the
reference caption of the same image, and then the other way round. Reported for each direction: METEOR of the
corpus and the segments from meteor-1.5.jar (pycocoevalcap's Meteor, on PTB tokens) and from
stages/metrics/meteor_python.py (on ptb-python tokens), how many segments agree to 1e-6, the mean and largest
segment difference, and MCITlib's caption average (mean of BLEU-1..4, METEOR, ROUGE-L, CIDEr, × 100) with java
and without. docs/metrics.md quotes the run on coco-caption's files (tylin/coco-caption:
results/captions_val2014_fakecap_results.json against data/captions_val2014_submission.json of its history).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmole.stages.metrics.coco_caption import coco_caption_scores


def _captions(path: Path) -> dict[int, str]:
    return {entry["image_id"]: entry["caption"] for entry in json.loads(path.read_text(encoding="utf-8"))}


def measure(predictions: list[str], references: list[list[str]]) -> dict:
    java, java_each = coco_caption_scores(predictions, references, tokenizer="ptb", meteor="java")
    free, free_each = coco_caption_scores(predictions, references, tokenizer="ptb-python", meteor="python")
    diffs = [b - a for a, b in zip(java_each["METEOR"], free_each["METEOR"])]
    mean = {name: sum(scores.values()) / len(scores) * 100 for name, scores in (("java", java), ("java_free", free))}
    return {
        "segments": len(diffs),
        "meteor": {"java": java["METEOR"], "java_free": free["METEOR"], "difference": free["METEOR"] - java["METEOR"]},
        "segments_equal": sum(abs(d) < 1e-6 for d in diffs),
        "segments_lower": sum(d < -1e-6 for d in diffs),
        "segments_higher": sum(d > 1e-6 for d in diffs),
        "mean_segment_difference": sum(diffs) / len(diffs),
        "largest_segment_difference": max(diffs, key=abs),
        "other_metrics_difference": {m: free[m] - java[m] for m in java if m != "METEOR"},
        "mcitlib_caption_average": {**mean, "difference": mean["java_free"] - mean["java"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("references", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    preds, refs = _captions(args.predictions), _captions(args.references)
    shared = sorted(set(preds) & set(refs))
    report = {
        "predictions_vs_references": measure([preds[i] for i in shared], [[refs[i]] for i in shared]),
        "references_vs_predictions": measure([refs[i] for i in shared], [[preds[i]] for i in shared]),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
