"""dmole's field metrics against CoIN++'s scorer on the same matrices.

    python bench/coinpp_agreement.py SCORE_COINPP_PY [--matrices 2000]

SCORE_COINPP_PY is zackschen/MCITlib-Train's scripts/coinpp/score_coinpp.py; its ``continual_metrics(matrix,
categories)`` is loaded from that file and run on random matrices (1 to 9 tasks, scores 0-100, with the zero-shot
row as its stage 0, which it leaves out of every metric as dmole does), beside stages/metrics/field_continual.py
and continual.py: average forgetting, per-task forgetting and best score, final average (Last), average
incremental accuracy (AVG over seen tasks) and BWT. Prints the largest difference; docs/metrics.md quotes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

from dmole.stages.metrics.continual import continual_metrics
from dmole.stages.metrics.field_continual import field_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path)
    parser.add_argument("--matrices", type=int, default=2000)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("score_coinpp", args.script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng, worst, compared = random.Random(0), 0.0, 0
    for _ in range(args.matrices):
        T = rng.randint(1, 9)
        R = [[rng.uniform(0, 100) for _ in range(T)] for _ in range(T + 1)]
        categories = [f"task{i}" for i in range(T)]
        theirs = module.continual_metrics({s: dict(zip(categories, R[s])) for s in range(T + 1)}, categories)
        field, own = field_metrics(R), continual_metrics(R)
        pairs = [
            (theirs["average_forgetting"], field["coinpp"]["average_forgetting"]),
            (theirs["final_average_accuracy"], own["last"]),
            (theirs["average_incremental_accuracy"], own["avg_seen"]),
            (theirs["backward_transfer"], own["bwt"]),
        ]
        rows = zip(theirs["per_task"], field["forgetting_table"])
        pairs += [(a["best_post_acquisition_score"], b["best"]) for a, b in rows]
        pairs += [
            (a["forgetting"], b["forgetting"]) for a, b in zip(theirs["per_task"][:-1], field["forgetting_table"])
        ]
        for a, b in pairs:
            if a is None or b is None:
                assert a is None and b is None, (a, b)
                continue
            worst, compared = max(worst, abs(a - b)), compared + 1
    print(f"{args.matrices} matrices, {compared} values compared, largest |CoIN++ - dmole| = {worst:.3g}")


if __name__ == "__main__":
    main()
