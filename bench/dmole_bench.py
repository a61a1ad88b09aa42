"""D-MoLE benchmarks on the synthetic benchmark, each comparison measured side by side in one run.

    python bench/dmole_bench.py --demo dmole-demo [--repeats 7] [--out bench/results/dmole.json]

1. quality: the demo's continual metrics per method (Last, AVG, BWT), from its report;
2. training step: a D-MoLE step (new expert trainable, a past expert routed in per sample through
   the mask hooks) against a plain PEFT LoRA step with the same trainable parameters, interleaved, and
   the D-MoLE step with no past expert routed in (what the routing machinery alone costs); once at the
   methods' LoRA dropout and once without dropout (each expert draws its own dropout mask, as the
   reference's does, and torch draws masks slowly on a CPU);
3. preprocessing: embed + fit-router + zc-score + allocate as a share of train-task, for one task (the median
   of a few rounds, each in a fresh workspace: train-task alone varies by a tenth between rounds here);
4. inference: routed generation (all experts, per-sample routing) against one task's single adapter.

Run `dmole demo --out DEMO` first: the quality table and the trained experts come from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from dmole.artifacts.io import read_json
from dmole.stages.allocate import allocate
from dmole.stages.data.tasks import load_eval_samples, load_train_samples
from dmole.stages.device import cpu_name
from dmole.stages.dmole.experts import ExpertModel
from dmole.stages.embed import embed
from dmole.stages.evaluation.predict import predict
from dmole.stages.fit_router import fit_router
from dmole.stages.init import create_workspace
from dmole.stages.methods import get_method
from dmole.stages.methods.lora import towers
from dmole.stages.models.registry import load_family
from dmole.stages.options import TrainTaskOptions
from dmole.stages.project import Project
from dmole.stages.registry import ALLOCATE, EMBED, EVAL, FIT_ROUTER, REPORT, TRAIN_TASK, ZC_SCORE
from dmole.stages.resolve import stage_options
from dmole.stages.train_task import method_hyper, train_task
from dmole.stages.training.chat import chat_examples
from dmole.stages.zc_score import zc_score
from step_ratio import median_ratio, step_ratio


def quality(project: Project) -> dict:
    report = project.store.require(REPORT.name, "all", hint="dmole demo")
    methods = read_json(report.file(REPORT.files.metrics))["methods"]
    return {m: {k: v[k] for k in ("last", "avg_seen", "avg_all", "bwt", "fwt")} for m, v in methods.items()}


def training_step(project: Project, repeats: int, dropout: bool = True) -> dict:
    """Task 2's D-MoLE step with task 1's expert routed in vs a plain PEFT step, on 16 of task 2's samples, with
    D-MoLE's LoRA as train-task builds it (the workspace's hyperparameters at the allocation's rank)."""
    names = project.config.task_names
    first, second = (read_json(project.store.require(ALLOCATE.name, n).file(ALLOCATE.files.arch)) for n in names[:2])
    partner, own = first["selected"], second["selected"]
    lora = method_hyper(project, get_method("dmole"), TrainTaskOptions()).lora(second["rank"])
    lora = lora if dropout else replace(lora, dropout=0.0)
    examples = chat_examples(load_train_samples(project.data_root, project.config.task(names[1]))[:16])
    return step_ratio(lambda: load_family(project.model_path), partner, own, examples, lora, repeats)


def _preprocessing_seconds(seconds: dict[str, float]) -> float:
    return sum(v for k, v in seconds.items() if k != TRAIN_TASK.name)


def preprocessing_share(demo: Path, rounds: int) -> dict:
    """One task's preprocessing against its train-task, each round in a fresh workspace over the demo's data;
    per-stage medians, and the median of the rounds' shares."""
    source = Project.open(demo / "workspace")
    task = source.config.task_names[0]
    runs: list[dict[str, float]] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            create_workspace(
                Path(tmp) / "ws", model=demo / "base-model", data=demo / "data", stages=source.config.stages
            )
            project = Project.open(Path(tmp) / "ws")
            seconds = {}
            for name, run in (
                (EMBED.name, partial(embed, project, task)),
                (FIT_ROUTER.name, partial(fit_router, project, task)),
                (ZC_SCORE.name, partial(zc_score, project, task)),
                (ALLOCATE.name, partial(allocate, project, task)),
                (TRAIN_TASK.name, partial(train_task, project, task)),
            ):
                start = time.perf_counter()
                run()
                seconds[name] = time.perf_counter() - start
            runs.append(seconds)
    shares = [_preprocessing_seconds(r) / r[TRAIN_TASK.name] for r in runs]
    medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    return {
        "task": task,
        "rounds": rounds,
        "seconds": medians,
        "runs": runs,
        "preprocessing_s": _preprocessing_seconds(medians),
        "share_of_train_task": statistics.median(shares),
        "shares": shares,
    }


def inference_throughput(project: Project, repeats: int) -> dict:
    """Samples per second: the stage-T D-MoLE model routing per sample vs the task's own single adapter."""
    names = project.config.task_names
    task = project.config.task(names[1])
    samples = load_eval_samples(project.data_root, task)
    options = stage_options(project.config, EVAL.name).for_task(task)
    routed_adapter, single_adapter = load_family(project.model_path), load_family(project.model_path)
    routed_plan = get_method("dmole").evaluation(project, names[-1], routed_adapter)
    routes, _errors = routed_plan.routes_for(task.name, samples, options)
    single = ExpertModel(single_adapter.model, towers(single_adapter))
    single.load_expert(2, project.store.require(TRAIN_TASK.name, names[1]).path / TRAIN_TASK.files.expert)

    def run_routed():
        predict(
            routed_adapter,
            task,
            samples,
            batch_size=options.batch_size,
            model=routed_plan.model,
            around_batch=routed_plan.around(routes),
        )

    def run_single():
        predict(
            single_adapter,
            task,
            samples,
            batch_size=options.batch_size,
            model=single.model,
            around_batch=lambda idx, inputs: single.routed([(2,)] * len(idx)),
        )

    times: tuple[list[float], list[float]] = ([], [])
    runs = list(enumerate((run_routed, run_single)))
    for i in range(repeats + 1):
        for which, run in runs if i % 2 else runs[::-1]:  # each goes first every other round
            start = time.perf_counter()
            run()
            if i >= 1:
                times[which].append(time.perf_counter() - start)
    result = median_ratio(*times)
    return {
        "task": task.name,
        "samples": len(samples),
        "experts_loaded": len(names),
        "routed_samples_per_s": len(samples) / result["median_a_s"],
        "single_samples_per_s": len(samples) / result["median_b_s"],
        **result,
        "a": "routed (all experts, per sample)",
        "b": "single adapter",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("dmole-demo"), help="output folder of `dmole demo`")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--preprocessing-rounds",
        type=int,
        default=3,
        help="fresh-workspace rounds of one task's preprocessing and train-task",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/dmole.json"))
    args = parser.parse_args()
    project = Project.open(args.demo / "workspace")
    results = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_name(),
        },
        "quality": quality(project),
        "training_step": training_step(project, args.repeats),
        "training_step_no_dropout": training_step(project, args.repeats, dropout=False),
        "inference": inference_throughput(project, args.repeats),
        "preprocessing": preprocessing_share(args.demo, args.preprocessing_rounds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
