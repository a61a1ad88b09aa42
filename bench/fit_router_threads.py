"""The routers' fit at one and at two threads, interleaved in one process: whether the thread count changes the
fitted weights, threshold or epoch count (it must not, to be a free choice), and what it does to the fit's time.
The first fit of the process pays torch's one-off warm-up; it is reported apart and left out of the medians.

    python bench/fit_router_threads.py -w dmole-demo/workspace --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dmole.stages.dmole.bank import load_embeddings, require_embeddings
from dmole.stages.dmole.router import fit_router
from dmole.stages.project import Project
from dmole.stages.registry import FIT_ROUTER
from dmole.stages.resolve import stage_options
from emit import emit

THREADS = (2, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="a workspace whose tasks are embedded")
    parser.add_argument("--rounds", type=int, default=3, help="fits per task and thread count")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    project = Project.open(args.workspace)
    options = stage_options(project.config, FIT_ROUTER.name, None)
    seconds: dict[int, list[float]] = {n: [] for n in THREADS}
    first, tasks = None, {}
    for task in project.config.task_names:
        _, matrix, _ = load_embeddings(require_embeddings(project, task), "train")
        fitted: dict[int, tuple] = {}
        for _ in range(args.rounds):
            for n in THREADS:
                torch.set_num_threads(n)
                start = time.perf_counter()
                fit = fit_router(matrix, options)
                elapsed = time.perf_counter() - start
                if first is None:
                    first = {"threads": n, "seconds": elapsed}
                else:
                    seconds[n].append(elapsed)
                fitted[n] = ({k: v.clone() for k, v in fit.model.state_dict().items()}, fit.threshold, fit.epochs)
        (one, t1, e1), (two, t2, e2) = fitted[1], fitted[2]
        tasks[task] = {
            "identical": all(torch.equal(one[k], two[k]) for k in one) and t1 == t2 and e1 == e2,
            "epochs": e1,
        }
    emit(
        {
            "workspace": str(args.workspace),
            "rounds": args.rounds,
            "first_fit": first,
            "median_seconds_per_fit": {str(n): statistics.median(s) for n, s in seconds.items()},
            "tasks": tasks,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
