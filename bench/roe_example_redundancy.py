"""How much the layers' redundancy differs between examples: the least-change ranking that static dropping and the
redundancy prior use (mean cos(input, output) of a layer over real tokens, stages/roe/fixed.py), taken per training
example instead of over the whole sample. For k = round(ρ·routable), each example's own k least-changing routable
layers are compared with the k of the pooled ranking: the share of examples whose set is exactly the pooled one,
the mean overlap |own ∩ pooled| / k, and the number of distinct sets per task. If nearly every example's set is the
pooled one, a per-example router has nothing to choose that static dropping does not.

    python bench/roe_example_redundancy.py -w roe-deep/workspace --twin TWIN_DIR --rho 0.3 --samples 256

``--twin``: a route-sweep seed's twin folder (``.runs/roe-sweep/twin/<key>/seed-N``) whose ``warm/`` tensors are
loaded (the dense twin RoE starts from under warm_start); without it, the untouched base.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

from dmole.stages.project import Project
from dmole.stages.roe.attach import roe_shape
from dmole.stages.roe.fixed import layer_change, least_change_layers
from dmole.stages.roe.recipe import WARM, load_for_training
from dmole.stages.route_sweep import sweep_settings
from dmole.stages.route_train import training_subset
from dmole.stages.training.chat import chat_examples
from emit import emit


def _task_summary(sets: list[set[int]], pooled: set[int]) -> dict:
    return {
        "examples": len(sets),
        "exactly_pooled": sum(s == pooled for s in sets) / len(sets),
        "distinct_sets": len({frozenset(s) for s in sets}),
        "most_common_sets": [[sorted(layers), n] for layers, n in Counter(frozenset(s) for s in sets).most_common(3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--twin", type=Path, help="a route-sweep seed's twin folder (its warm/ tensors are loaded)")
    parser.add_argument("--rho", type=float, default=0.3)
    parser.add_argument("--samples", type=int, default=256, help="training examples, drawn with the workspace seed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    start = time.perf_counter()
    project = Project.open(args.workspace)
    settings = sweep_settings(project)
    adapter, _ = load_for_training(project, settings, args.twin / WARM if args.twin else None)
    pairs = training_subset(project, project.config.tasks, settings, project.config.seed)
    picked = random.Random(f"{project.config.seed}-example-redundancy").sample(pairs, min(args.samples, len(pairs)))
    routable = list(roe_shape(adapter, settings.always_execute).routable)
    k = round(args.rho * len(routable))

    batches = [(task, adapter.train_batch(chat_examples([sample]))) for task, sample in picked]
    changes = [layer_change(adapter, [batch]) for _, batch in batches]
    # the pooled ranking weights each example by its real tokens, as layer_change over the whole sample does
    tokens = [int(batch["attention_mask"].sum()) for _, batch in batches]
    pooled = [sum(c[l] * n for c, n in zip(changes, tokens)) / sum(tokens) for l in range(len(changes[0]))]
    pooled_set = set(least_change_layers(pooled, routable, k))
    own = [(task, set(least_change_layers(change, routable, k))) for (task, _), change in zip(batches, changes)]
    tasks = list(dict.fromkeys(task for task, _ in own))
    emit(
        {
            "workspace": str(args.workspace),
            "model": f"dense twin ({args.twin})" if args.twin else "base",
            "rho": args.rho,
            "k": k,
            "examples": len(own),
            "pooled_layers": sorted(pooled_set),
            "exactly_pooled": sum(s == pooled_set for _, s in own) / len(own),
            "mean_overlap": sum(len(s & pooled_set) for _, s in own) / (k * len(own)),
            "per_task": {task: _task_summary([s for t, s in own if t == task], pooled_set) for task in tasks},
            "seconds": time.perf_counter() - start,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
