"""Does the rounding of the routers' fit reach D-MoLE's routing, and what does each Adam cost? Each task's router
is fitted from its stored embeddings with three Adams: fit-router's (``SingleTensorAdam``: torch's single-tensor
kernels called directly), torch.optim.Adam itself (the same kernels behind the optimizer's bookkeeping, as
fit-router stepped until it had its own), and torch's fused CPU Adam (the same update in other rounding).
Reported against fit-router's, per other Adam: per task the epochs run, the threshold and the largest weight
difference; how many evaluation routes (every stage's test samples, under the workspace's eval rule and under
the reference's batch vote) and training partners (each task's training samples against the routers before it)
differ; and each fit's time (medians of interleaved fits of the first task, after one warm-up fit).

    python bench/router_fit_rounding.py -w dmole-demo/workspace --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dmole.stages.dmole.bank import RouterBank, load_embeddings, require_embeddings
from dmole.stages.dmole.router import FittedRouter, SingleTensorAdam, fit_router
from dmole.stages.dmole.routing import evaluation_routes, training_partner
from dmole.stages.project import Project
from dmole.stages.registry import EVAL, FIT_ROUTER
from dmole.stages.resolve import stage_options
from emit import emit


class TorchAdam:
    """torch.optim.Adam behind fit_router's optimizer interface, the learning rate set as its scheduler sets it."""

    def __init__(self, param: torch.nn.Parameter, fused: bool):
        self.optimizer = torch.optim.Adam([param], fused=fused)

    def step(self, lr: float) -> None:
        self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.step()


ADAMS = {
    "stage": SingleTensorAdam,
    "optimizer": partial(TorchAdam, fused=False),
    "fused": partial(TorchAdam, fused=True),
}
OTHERS = [adam for adam in ADAMS if adam != "stage"]


def fit(matrix: np.ndarray, options, adam: str) -> FittedRouter:
    return fit_router(matrix, options, adam=ADAMS[adam])


def bank(tasks: list[str], routers: list[FittedRouter], metadata: dict[str, str]) -> RouterBank:
    """The routers of ``tasks`` (the first len(tasks) of ``routers``) as eval and train-task score with them."""
    fitted = routers[: len(tasks)]
    return RouterBank(tasks, [r.model for r in fitted], np.array([r.threshold for r in fitted]), metadata)


def differing(pairs, unit: str) -> dict[str, int]:
    """How many entries differ, and how many there are (under ``unit``), over pairs of equally long route lists."""
    counts = [(sum(a != b for a, b in zip(x, y)), len(x)) for x, y in pairs]
    return {"differing": sum(d for d, _ in counts), unit: sum(n for _, n in counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="a workspace whose tasks are embedded")
    parser.add_argument("--rounds", type=int, default=7, help="timed fits of the first task per Adam")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    project = Project.open(args.workspace)
    options = stage_options(project.config, FIT_ROUTER.name, None)
    rules = {"workspace": stage_options(project.config, EVAL.name, None)}
    rules["batch-vote"] = rules["workspace"].model_copy(update={"routing": "batch-vote"})
    tasks = project.config.task_names
    embedded = {
        t: {split: load_embeddings(require_embeddings(project, t), split)[1:] for split in ("train", "test")}
        for t in tasks
    }
    routers = {adam: [fit(embedded[t]["train"][0], options, adam) for t in tasks] for adam in ADAMS}

    def routes(adam: str, rule: str, stage: int, task: str):
        matrix, metadata = embedded[task]["test"]
        routing = bank(tasks[:stage], routers[adam], metadata)
        return evaluation_routes(routing.errors(matrix, metadata), routing.thresholds, rules[rule])

    def partners(adam: str, task_id: int):
        matrix, metadata = embedded[tasks[task_id - 1]]["train"]
        past = bank(tasks[: task_id - 1], routers[adam], metadata)
        return training_partner(past.errors(matrix, metadata), past.thresholds)

    def weight_difference(a: FittedRouter, b: FittedRouter) -> float:
        pairs = zip(a.model.state_dict().values(), b.model.state_dict().values())
        return max(float((x - y).abs().max()) for x, y in pairs)

    per_task = {
        t: {
            "epochs": {adam: routers[adam][i].epochs for adam in ADAMS},
            "threshold": {adam: routers[adam][i].threshold for adam in ADAMS},
            "max_weight_difference": {
                adam: weight_difference(routers["stage"][i], routers[adam][i]) for adam in OTHERS
            },
        }
        for i, t in enumerate(tasks)
    }
    evaluation = {
        rule: {
            adam: differing(
                (
                    (routes("stage", rule, stage, t), routes(adam, rule, stage, t))
                    for stage in range(1, len(tasks) + 1)
                    for t in tasks[:stage]
                ),
                "routes",
            )
            for adam in OTHERS
        }
        for rule in rules
    }
    training = {
        adam: differing(((partners("stage", i), partners(adam, i)) for i in range(2, len(tasks) + 1)), "samples")
        for adam in OTHERS
    }

    first = embedded[tasks[0]]["train"][0]
    seconds: dict[str, list[float]] = {adam: [] for adam in ADAMS}
    fit(first, options, "stage")  # torch's one-off warm-up
    for round_ in range(args.rounds):
        for adam in ADAMS if round_ % 2 == 0 else reversed(ADAMS):
            start = time.perf_counter()
            fit(first, options, adam)
            seconds[adam].append(time.perf_counter() - start)
    emit(
        {
            "workspace": str(args.workspace),
            "tasks": per_task,
            "evaluation_routes": evaluation,
            "training_partners": training,
            "fit_seconds": {"task": tasks[0], "rounds": args.rounds}
            | {adam: statistics.median(s) for adam, s in seconds.items()},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
