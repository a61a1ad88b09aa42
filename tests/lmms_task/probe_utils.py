"""lmms-eval task functions for tests/test_lmms_plugin.py: each document carries a dmole task's rendered prompt,
its image and its references; the score is the task's own metric (stages/metrics), so lmms-eval's score equals
`dmole eval`'s exactly when the replies do."""

import json

from stages.metrics.families import score_family


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def process_results(doc, results):
    return {"dmole_score": {"family": doc["family"], "reply": results[0], "references": json.loads(doc["references"])}}


def aggregate(items):
    score, _, _ = score_family(items[0]["family"], [i["reply"] for i in items], [i["references"] for i in items])
    return score
