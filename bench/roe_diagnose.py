"""One RoE training on a workspace with route-train's options (and KEY=VALUE overrides, values as JSON): its training
log every ``--every`` steps (stage, τ, CE, hinge, soft and hard skip), then its realised skip per layer, skip
patterns per task and scores on the test sets, relative to a dense reference's scores (``--dense``, a JSON of task
scores: e.g. a route-sweep twin's ``dense_scores.json`` under ``.runs/roe-sweep/twin/``). With ``warm_start`` (the
synthetic workspaces' default) RoE starts from the dense twin kept in ``--twin`` (a route-sweep seed's twin folder,
``.runs/roe-sweep/twin/<key>/seed-N``: reused there, or trained and kept there); its reference is then that folder's
``warm_dense_scores.json``.

    python bench/roe_diagnose.py -w roe-deep/workspace --dense DENSE.json hinge_gamma=1 --seed 42
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dmole.stages.project import Project
from dmole.stages.roe.attach import attach, roe_shape
from dmole.stages.roe.evaluation import eval_sets, evaluate_routed, skip_stats
from dmole.stages.roe.modules import RoEModules
from dmole.stages.roe.prior import apply_router_prior
from dmole.stages.roe.recipe import load_for_training, loop_settings, train_roe, warm_start
from dmole.stages.roe.sweep import mean_relative, relative, skip_patterns
from dmole.stages.route_sweep import sweep_settings
from dmole.stages.route_train import training_subset
from emit import emit

LOGGED = ("step", "stage", "tau", "loss", "ce", "reg", "soft_skip", "hard_skip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--dense", type=Path, help="the dense reference's task scores (JSON)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--every", type=int, default=15, help="log every N steps")
    parser.add_argument("--twin", type=Path, help="with warm_start: the dense twin's folder (reused, or trained there)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="route-train options, values as JSON")
    args = parser.parse_args()

    start = time.perf_counter()
    project = Project.open(args.workspace)
    overrides = {k: json.loads(v) for k, v in (pair.split("=", 1) for pair in args.overrides)}
    settings = sweep_settings(project, overrides)
    samples = [s for _, s in training_subset(project, project.config.tasks, settings, project.config.seed)]
    sets = eval_sets(project, settings.max_eval_samples)
    if settings.warm_start and args.twin is None:
        parser.error("the workspace's route-train starts from the dense twin (warm_start): give --twin")
    loop = loop_settings(settings, args.seed, 0)
    warm = warm_start(project, samples, sets, settings, loop, checkpoint_dir=args.twin) if settings.warm_start else None
    adapter, _ = load_for_training(project, settings, warm)
    shape = roe_shape(adapter, settings.always_execute, settings.adapter_rank, settings.router_input)
    torch.manual_seed(args.seed)
    attachment = attach(adapter, RoEModules(shape))
    apply_router_prior(adapter, attachment.modules, samples, settings, project.config.seed)
    log = train_roe(adapter, attachment.modules, samples, settings, loop).log
    scores, rows = evaluate_routed(
        adapter, attachment, sets, settings.eval_batch_size, settings.batch_rule, run_id="diagnose"
    )
    stats = skip_stats(rows, shape.n_layers)
    rel = relative(scores, json.loads(args.dense.read_text())) if args.dense else None
    emit(
        {
            "overrides": overrides,
            "seed": args.seed,
            "log": [{k: float(row[k]) for k in LOGGED} for row in log[:: args.every] + log[-1:]],
            "skip_rate": stats["skip_rate"],
            "skip_rate_per_layer": stats["skip_rate_per_layer"],
            "skip_patterns": skip_patterns(rows),
            "scores": scores,
            "relative": rel,
            "mean_relative": mean_relative(rel) if rel else None,
            "seconds": time.perf_counter() - start,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
