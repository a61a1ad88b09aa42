"""Batch-1 generation speed of a workspace's trained RoE (spec roe.md §6.3), with its learned decisions: the model
RoE was trained on (the base, or with `route-train --from TASK` the continual model with each sample's experts)
dense against routed, on the first ``--per-task`` test prompts of every task.

Both variants call ``model.generate`` on the same attached model with a fixed number of new tokens (greedy,
``min_new_tokens`` = ``max_new_tokens``), interleaved per prompt after a warm-up; per prompt the median of
``--repeats`` timings, summed over the prompts. The routed run's skip decisions are the routers' own, so the
realised skip rate on these prompts is reported beside the speed-up.

    python bench/roe_workspace_speed.py -w dmole-synth/workspace --json bench-roe-workspace.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dmole.stages.device import cpu_name
from dmole.stages.project import Project
from dmole.stages.roe.evaluation import TrainedRoE
from dmole.stages.roe.plan import RoutingPlan
from dmole.stages.roe.speed import batch1_speed, workspace_prompts
from emit import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--per-task", type=int, default=4, help="test prompts per task")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    project = Project.open(args.workspace)
    trained = TrainedRoE.latest(project)
    adapter, attachment, continual = trained.routed_model(project)
    routable = attachment.modules.shape.routable
    prompts = workspace_prompts(project, adapter, continual, args.per_task)
    speed = batch1_speed(
        adapter,
        prompts,
        routable,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        new_plan=lambda _prompt: RoutingPlan(batch_rule=trained.config["batch_rule"]),
    )
    results = {
        "device": f"cpu ({cpu_name()}, {args.threads} thread(s))"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "workspace": str(args.workspace),
        "route_train": str(trained.version),
        "from": trained.config.get("from", "base"),
        "router_input": trained.config["variant"],
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "skip_rate": speed.skip_rate,
        "seconds": {"dense": speed.dense_seconds, "routed": speed.routed_seconds},
        "speedup_measured": speed.speedup,
    }
    emit(results, args.json)


if __name__ == "__main__":
    main()
