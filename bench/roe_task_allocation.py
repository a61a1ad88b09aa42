"""Does knowing the task help layer dropping? Static dropping with each task's own skip set, trained and scored as
route-sweep trains and scores its static baseline, against the same k layers for every example.

RoE's routers see one example and choose its layers; a router that knew the example's task exactly could do at
least what a per-task static set does. What per-task sets gain over the one pooled set at the same mean skip is
therefore the part of routing's possible gain that task identity alone makes available (examples within a task
could still differ), and a gain the routers leave on the table if they do not reach it.

    python bench/roe_task_allocation.py -w roe-deep/workspace --twin TWIN_DIR --seed 42 --layers 16 \
        --variant uniform|task-layers|task-depth [--depth shape-caption=-4 --depth color-vqa=1 ...]

- ``uniform``: the k routable layers that change their input least over the training sample (route-sweep's static);
- ``task-layers``: per task, the k layers that change that task's training examples least;
- ``task-depth``: as ``task-layers`` with k + ``--depth`` layers for the named tasks (an allocation probe: choose
  the offsets so that the mean over the test sets stays k, and say where they came from).

``--twin``: a route-sweep seed's twin folder (``.runs/roe-sweep/twin/<key>/seed-N``): training starts from its
``warm/`` tensors and the scores are relative to its ``warm_dense_scores.json``, as in the sweep.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from dmole.artifacts.io import read_json
from dmole.stages.project import Project
from dmole.stages.roe.attach import roe_shape
from dmole.stages.roe.evaluation import eval_sets
from dmole.stages.roe.fixed import least_change_layers
from dmole.stages.roe.prior import measure_change
from dmole.stages.roe.recipe import WARM_SCORES, load_for_training
from dmole.stages.roe.sweep import SweepInputs, mean_relative, relative, train_and_score
from dmole.stages.route_sweep import sweep_settings
from dmole.stages.route_train import training_subset
from emit import emit
from twin_runs import add_twin_arguments, untimed_sweep, warm_tensors


@dataclass(frozen=True)
class TaskStatic:
    """Static dropping with a skip set per task: a training sample is keyed by its index in the training samples,
    a test sample by (task, index), as route-sweep's baselines are keyed."""

    layers: dict[str, tuple[int, ...]]
    train_tasks: tuple[str, ...]
    kind: str = "task-static"

    def _task(self, key: Hashable) -> str:
        return key[0] if isinstance(key, tuple) else self.train_tasks[int(key)]

    def skips(self, keys: Sequence[Hashable], layer: int, _step: int = -1) -> torch.Tensor:
        return torch.tensor([layer in self.layers[self._task(key)] for key in keys], dtype=torch.bool)

    def forced(self, keys: Sequence[Hashable], routable: Sequence[int]) -> dict[int, torch.Tensor]:
        return {layer: self.skips(keys, layer) for layer in routable}


def _depth_offset(item: str) -> tuple[str, int]:
    """``--depth TASK=OFFSET``, parsed by argparse (a bad value is its one-line error)."""
    task, _, offset = item.partition("=")
    try:
        return task, int(offset)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{item!r}: expected TASK=OFFSET, the offset an integer") from None


def skip_sets(project, settings, sweep, pairs, warm, variant, k, offsets) -> dict[str, tuple[int, ...]]:
    """Each task's skipped layers, ranked on the twin by `measure_change` as the sweep's static baseline ranks them."""
    adapter, _ = load_for_training(project, settings, warm)
    routable = list(roe_shape(adapter, settings.always_execute).routable)
    tasks = project.config.task_names

    def least_change(subset: list, count: int) -> tuple[int, ...]:
        change = measure_change(adapter, subset, sweep.change_samples, project.config.seed, settings.eval_batch_size)
        return least_change_layers(change, routable, count)

    if variant == "uniform":
        pooled = least_change([s for _, s in pairs], k)
        return {task: pooled for task in tasks}
    return {task: least_change([s for t, s in pairs if t == task], k + offsets.get(task, 0)) for task in tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_twin_arguments(parser)
    parser.add_argument("--layers", type=int, required=True, help="k: layers skipped per example")
    parser.add_argument("--variant", choices=("uniform", "task-layers", "task-depth"), required=True)
    parser.add_argument(
        "--depth", action="append", default=[], type=_depth_offset, help="TASK=OFFSET: task-depth's k offsets"
    )
    args = parser.parse_args()
    if args.depth and args.variant != "task-depth":
        parser.error("--depth applies to --variant task-depth only")
    offsets = dict(args.depth)
    warm = warm_tensors(parser, args.twin)

    start = time.perf_counter()
    project = Project.open(args.workspace)
    if unknown := set(offsets) - set(project.config.task_names):
        parser.error(f"unknown tasks in --depth: {sorted(unknown)}")
    settings = sweep_settings(project)
    sweep = untimed_sweep(project)
    pairs = training_subset(project, project.config.tasks, settings, project.config.seed)
    samples = [s for _, s in pairs]
    inputs = SweepInputs(samples, eval_sets(project, settings.max_eval_samples), settings, sweep)
    dense = read_json(args.twin / WARM_SCORES)

    layers = skip_sets(project, settings, sweep, pairs, warm, args.variant, args.layers, offsets)
    fixed = TaskStatic(layers, tuple(t for t, _ in pairs))
    skip, scores, _, patterns = train_and_score(project, inputs, settings.skip_ratio, args.seed, fixed, warm=warm)
    rel = relative(scores, dense)
    emit(
        {
            "workspace": str(args.workspace),
            "twin": str(args.twin),
            "seed": args.seed,
            "variant": args.variant,
            "k": args.layers,
            "depth_offsets": offsets,
            "layers": {task: list(v) for task, v in layers.items()},
            "skip_rate": skip,
            "scores": scores,
            "relative": rel,
            "mean_relative": mean_relative(rel),
            "skip_patterns": patterns,
            "seconds": time.perf_counter() - start,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
