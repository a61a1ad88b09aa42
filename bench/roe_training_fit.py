"""Is RoE's shortfall against static dropping there on the examples it was trained on?

RoE's routers start on static dropping's layers (the redundancy prior) and training moves them. If RoE also scores
below static dropping on its own training examples, its training objective leads the routers to worse choices on
the very data it fits (an optimisation shortfall); if it matches static there and falls behind only on the test
sets, the routers fit choices that do not carry over (a generalisation gap).

    python bench/roe_training_fit.py -w roe-deep/workspace --twin TWIN_DIR --seed 42 [--target 0.5] [--examples 48]

From a route-sweep seed's twin (``.runs/roe-sweep/twin/<key>/seed-N``), as route-sweep trains them: the dense
reference (the twin trained on with every layer executed), RoE at ``--target``, and static dropping of the k
least-changing layers with k = round(RoE's realised skip × routable layers). Each is scored on every task's test
set and on the task's first ``--examples`` training items written again as an evaluation split
(`training_items_as_eval`), so the workspace must be one `dmole synth` wrote (its ``synth.json`` beside the
workspace folder). RoE's realised skip here is over both splits; the test-split scores of the reference must equal
the twin's ``warm_dense_scores.json`` (checked), as every run here is route-sweep's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dmole.artifacts.io import read_json
from dmole.stages.data.synthetic import SynthSizes, training_items_as_eval
from dmole.stages.data.tasks import load_eval_samples
from dmole.stages.project import Project
from dmole.stages.roe.attach import roe_shape
from dmole.stages.roe.evaluation import eval_sets
from dmole.stages.roe.fixed import FixedRouting, least_change_layers
from dmole.stages.roe.recipe import WARM_SCORES, dense_twin_scores, load_for_training, loop_settings
from dmole.stages.roe.sweep import SweepInputs, mean_relative, relative, static_ranking, train_and_score
from dmole.stages.route_sweep import sweep_settings
from dmole.stages.route_train import training_subset
from emit import emit
from twin_runs import add_twin_arguments, untimed_sweep, warm_tensors

TRAINING = "@train"  # suffix of a task's training-items split in the score tables


def training_sets(project, scratch: Path, synth: dict, count: int) -> list:
    """Per task, its first ``count`` training items as an evaluation set, named ``<task>@train``."""
    sizes = SynthSizes(**synth["sizes"])
    sets = []
    for task in project.config.tasks:
        relative_path = training_items_as_eval(scratch, task.name, count, seed=synth["seed"], sizes=sizes)
        spec = task.model_copy(
            update={
                "name": task.name + TRAINING,
                "eval": relative_path,
                "eval_annotations": None,
                "eval_image_root": None,
            }
        )
        sets.append((spec, load_eval_samples(scratch, spec)))
    return sets


def split(scores: dict[str, float], dense: dict[str, float]) -> dict:
    """Relative scores and their mean, for the test split and the training-items split."""
    out = {}
    for name, keep in (("test", lambda t: not t.endswith(TRAINING)), ("training", lambda t: t.endswith(TRAINING))):
        rel = relative({t: v for t, v in scores.items() if keep(t)}, dense)
        out[name] = {"relative": rel, "mean_relative": mean_relative(rel)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_twin_arguments(parser)
    parser.add_argument("--target", type=float, default=0.5, help="ρ RoE trains at")
    parser.add_argument("--examples", type=int, default=48, help="training items per task scored")
    args = parser.parse_args()
    warm = warm_tensors(parser, args.twin)
    synth_file = args.workspace.resolve().parent / "synth.json"
    if not synth_file.is_file():
        parser.error(f"no {synth_file}: the workspace must be one `dmole synth` wrote")

    start = time.perf_counter()
    project = Project.open(args.workspace)
    synth = read_json(synth_file)
    if not 0 < args.examples <= synth["sizes"]["train_per_task"]:
        parser.error(f"--examples must be between 1 and {synth['sizes']['train_per_task']}")
    settings = sweep_settings(project).model_copy(update={"skip_ratio": args.target})
    sweep = untimed_sweep(project)
    samples = [s for _, s in training_subset(project, project.config.tasks, settings, project.config.seed)]
    with tempfile.TemporaryDirectory() as scratch:
        sets = eval_sets(project, settings.max_eval_samples) + training_sets(
            project, Path(scratch), synth, args.examples
        )
        inputs = SweepInputs(samples, sets, settings, sweep)
        loop = loop_settings(settings, args.seed, 0)
        dense = dense_twin_scores(project, samples, sets, settings, loop, warm=warm)
        cached = read_json(args.twin / WARM_SCORES)
        if {t: dense[t] for t in cached} != cached:
            raise SystemExit("the dense reference does not reproduce the twin's test scores: not route-sweep's runs")
        skip, roe_scores, _, patterns = train_and_score(project, inputs, args.target, args.seed, None, warm=warm)
        adapter, _ = load_for_training(project, settings, warm)
        routable = list(roe_shape(adapter, settings.always_execute).routable)
        change = static_ranking(project, inputs, project.config.seed, warm)
        layers = least_change_layers(change, routable, round(skip * len(routable)))
        fixed = FixedRouting("static", layers=layers, seed=args.seed)
        static_skip, static_scores, _, _ = train_and_score(project, inputs, args.target, args.seed, fixed, warm=warm)
    emit(
        {
            "workspace": str(args.workspace),
            "twin": str(args.twin),
            "seed": args.seed,
            "target": args.target,
            "examples": args.examples,
            "dense": dense,
            "roe": {"skip_rate": skip, "scores": roe_scores, "skip_patterns": patterns, **split(roe_scores, dense)},
            "static": {
                "skip_rate": static_skip,
                "layers": list(layers),
                "scores": static_scores,
                **split(static_scores, dense),
            },
            "seconds": time.perf_counter() - start,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
