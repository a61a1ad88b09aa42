"""Share of training time spent waiting for inputs, with the inputs built inline on the training thread (0
workers) against built ahead by worker processes, side by side on the same training (interleaved repeats).

    python bench/input_pipeline.py -w dmole-demo/workspace --task shape-caption --workers 0 2 [--repeats 3]
        [--epochs 4 --unremembered 0]

``--unremembered W`` adds runs with W workers in which the adapter renders every conversation's chat template
again at every epoch, as before it remembered them (`FamilyAdapter.training_text`).

Each run is train-task's own loop (seq-lora on every projection, the task's training data, the workspace's
train-task settings) without writing artifacts; the loop's input pipeline reports how long the training thread
waited for the next micro-batch. The losses of every run must be identical (the same batches in the same order).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dmole.stages.device import cpu_name
from dmole.stages.project import Project
from dmole.stages.train_task import train_run
from dmole.stages.training.inputs import InputPipeline
from dmole.stages.training.loop import ParamGroup, train
from dmole.stages.training.steps import loop_settings, step_loss
from emit import emit


class _Forgetful(dict):
    """A memo that never remembers."""

    def __setitem__(self, key, value) -> None:
        pass


def one_run(project: Project, task: str, workers: int, epochs: float, remember: bool = True) -> dict:
    method, run, _ = train_run(project, task, {"method": "seq-lora", "epochs": epochs, "input_workers": workers})
    adapter = project.load_model()
    if not remember:
        adapter._rendered = _Forgetful()
    torch.manual_seed(run.options.seed)
    trainer = method.trainer(run, adapter)
    trainer.model.train()
    pipeline = InputPipeline(trainer.inputs, adapter.on_device, workers)
    start = time.perf_counter()
    result = train(
        trainer.model,
        [ParamGroup(method.name, trainer.params)],
        step_loss(trainer),
        len(run.samples),
        loop_settings(run.options, run.spec),
        inputs=pipeline,
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "input_wait": pipeline.waited,
        "share": pipeline.waited / seconds,
        "steps": result.steps,
        "losses": [row["loss"] for row in result.log],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--unremembered",
        type=int,
        nargs="*",
        default=[],
        help="worker counts also run with every conversation rendered again at every epoch",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    project = Project.open(args.workspace)
    settings = [(str(w), w, True) for w in args.workers] + [(f"{w} unremembered", w, False) for w in args.unremembered]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
    for _ in range(args.repeats):
        for name, workers, remember in settings:  # interleaved, so drift hits every setting alike
            runs[name].append(one_run(project, args.task, workers, args.epochs, remember))
    losses = {tuple(r["losses"]) for rs in runs.values() for r in rs}
    results = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)",
        "task": args.task,
        "epochs": args.epochs,
        "steps": runs[settings[0][0]][0]["steps"],
        "identical_losses": len(losses) == 1,
        "workers": {
            name: {
                "median_seconds": statistics.median(r["seconds"] for r in rs),
                "median_input_wait": statistics.median(r["input_wait"] for r in rs),
                "median_wait_share": statistics.median(r["share"] for r in rs),
            }
            for name, rs in runs.items()
        },
    }
    emit(results, args.json)


if __name__ == "__main__":
    main()
