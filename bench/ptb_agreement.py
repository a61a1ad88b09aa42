"""How far the Java-free caption tokenizers are from pycocoevalcap's PTB tokenizer (needs java), on shared captions.

    python bench/ptb_agreement.py PREDICTIONS.json REFERENCES.json [--out result.json]

Both files are COCO caption results (a list of {"image_id", "caption"}); the predictions are scored against the
reference caption of the same image. Reported, for ``ptb-python`` and ``simple`` against ``ptb``: how many of all
the captions tokenise to the same tokens, and CIDEr-D (x100) of the predictions against the references, and of
the references against the predictions (so that both sides' text goes through each tokenizer as a prediction).
docs/dmole.md quotes the run on coco-caption's sample files (tylin/coco-caption: results/
captions_val2014_fakecap_results.json against data/captions_val2014_submission.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmole.stages.metrics.caption import cider_d, tokenize_captions

CANDIDATES = ("ptb-python", "simple")


def _captions(path: Path) -> dict[int, str]:
    return {entry["image_id"]: entry["caption"] for entry in json.loads(path.read_text(encoding="utf-8"))}


def measure(predictions: dict[int, str], references: dict[int, str]) -> dict:
    shared = sorted(set(predictions) & set(references))
    texts = list(predictions.values()) + list(references.values())
    tokens = {name: [t.split() for t in tokenize_captions(texts, name)] for name in ("ptb", *CANDIDATES)}
    preds, refs = [predictions[i] for i in shared], [references[i] for i in shared]
    cider = {
        name: {
            "predictions_vs_references": cider_d(preds, [[r] for r in refs], name)[0],
            "references_vs_predictions": cider_d(refs, [[p] for p in preds], name)[0],
        }
        for name in ("ptb", *CANDIDATES)
    }
    return {
        "captions": len(texts),
        "scored_pairs": len(shared),
        "same_tokens": {name: sum(a == b for a, b in zip(tokens[name], tokens["ptb"])) for name in CANDIDATES},
        "cider": cider,
        "cider_minus_ptb": {name: {k: cider[name][k] - cider["ptb"][k] for k in cider["ptb"]} for name in CANDIDATES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("references", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(_captions(args.predictions), _captions(args.references))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
