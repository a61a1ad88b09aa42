"""What a task's preprocessing costs as the README's shell loop runs it: every stage its own `dmole` process.

    python bench/shell_loop.py --demo dmole-demo [--rounds 3] [--dmole PATH ...] [--out bench/results/shell_loop.json]

Each round makes a fresh workspace over the demo's model, data and stage settings and runs the first task's embed,
fit-router, zc-score, allocate and train-task, each timed as a process from its start to its exit; then every stage
once more, now up to date, which is the process's start and its checks alone. With several --dmole executables
(another checkout's, say) the rounds interleave, so each is measured beside the others under the same load.
`dmole_bench.py` measures the same stages inside one process: the work without the interpreter's start.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmole.stages.device import cpu_name
from dmole.stages.init import create_workspace
from dmole.stages.project import Project
from dmole.stages.registry import ALLOCATE, EMBED, FIT_ROUTER, TRAIN_TASK, ZC_SCORE

PREPROCESSING = (EMBED.name, FIT_ROUTER.name, ZC_SCORE.name, ALLOCATE.name)
STAGES = (*PREPROCESSING, TRAIN_TASK.name)


def timed(command: list[str]) -> float:
    """Seconds from the process's start to its exit; a failure stops the benchmark with its output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return seconds


def one_round(dmole: str, demo: Path) -> dict[str, dict[str, float]]:
    """One fresh workspace with the demo's stage settings: each stage's process time, computing, then up to date."""
    source = Project.open(demo / "workspace")
    task = source.config.task_names[0]
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        create_workspace(workspace, model=demo / "base-model", data=demo / "data", stages=source.config.stages)
        commands = {stage: [dmole, stage, "--task", task, "--workspace", str(workspace), "-q"] for stage in STAGES}
        computing = {stage: timed(command) for stage, command in commands.items()}
        up_to_date = {stage: timed(command) for stage, command in commands.items()}
    return {"computing": computing, "up_to_date": up_to_date}


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict:
    shares = [sum(r["computing"][s] for s in PREPROCESSING) / r["computing"][TRAIN_TASK.name] for r in rounds]
    medians = {
        kind: {stage: statistics.median(r[kind][stage] for r in rounds) for stage in STAGES}
        for kind in ("computing", "up_to_date")
    }
    return {
        **medians,
        "preprocessing_s": sum(medians["computing"][s] for s in PREPROCESSING),
        "share_of_train_task": statistics.median(shares),
        "shares": shares,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("dmole-demo"), help="output folder of `dmole demo`")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dmole",
        action="append",
        metavar="[LABEL=]PATH",
        help="a dmole executable to measure, named LABEL in the results (default: its path); repeat the option to "
        "measure several side by side (default: this environment's)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/shell_loop.json"))
    args = parser.parse_args()
    named = [item.partition("=")[::2] if "=" in item else (item, item) for item in args.dmole or []]
    executables = dict(named) or {"dmole": str(Path(sys.executable).with_name("dmole"))}
    rounds: dict[str, list] = {label: [] for label in executables}
    order = list(executables)
    for i in range(args.rounds):
        for label in order if i % 2 == 0 else order[::-1]:  # each goes first every other round
            rounds[label].append(one_round(executables[label], args.demo))
            print(f"round {i + 1}, {label}: {rounds[label][-1]['computing']}", file=sys.stderr, flush=True)
    results = {
        "machine": {"python": platform.python_version(), "cpu": cpu_name()},
        "task_stages": list(STAGES),
        "executables": {label: summarise(r) for label, r in rounds.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps(
            {exe: {k: v for k, v in s.items() if k != "rounds"} for exe, s in results["executables"].items()}, indent=2
        )
    )


if __name__ == "__main__":
    main()
