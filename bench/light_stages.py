"""Wall time of dmole's light commands on a built workspace, each a fresh process as a shell loop runs it,
measured side by side (interleaved rounds, median per command), with the heavy libraries each one imported.

    python bench/light_stages.py -w dmole-demo/workspace [--repeats 5] [--json out.json]

The commands: ``--help``, ``tasks``, ``ls``, ``show allocate``, ``allocate --force`` (re-running the stage),
``report --json`` (figures are drawn only when the report changes; ``--force`` redraws them and is timed too), and
each stage of the README's loop finding its result up to date, as a resumed loop runs it (train-task and eval on the
second task, whose D-MoLE run has a past task's routers for its training partners).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "matplotlib")
# Runs the CLI in-process and reports, at exit, which heavy modules it imported.
PROBE = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write('HEAVY ' + ','.join(m for m in {heavy} "
    "if m in sys.modules) + '\\n')); sys.argv = ['dmole'] + sys.argv[1:]; from dmole.cli.app import main; main()"
)


def run(args: list[str]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dmole {' '.join(args)} failed: {done.stderr.strip()[-400:]}")
    line = next(l for l in done.stderr.splitlines() if l.startswith("HEAVY "))
    return seconds, [m for m in line.removeprefix("HEAVY ").split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    w = ["-w", str(args.workspace)]
    task, second = subprocess.run(
        [sys.executable, "-m", "dmole.cli", "tasks", *w], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    commands = {
        "dmole --help": ["--help"],
        "dmole tasks": ["tasks", *w],
        "dmole ls": ["ls", *w],
        f"dmole show allocate --task {task}": ["show", "allocate", "--task", task, *w],
        f"dmole allocate --task {task} --force": ["allocate", "--task", task, "--force", *w],
        "dmole report --json": ["report", "--json", *w],
        "dmole report --force (draws the figures)": ["report", "--force", "-q", *w],
        **{
            f"dmole {stage} --task {task} (up to date)": [stage, "--task", task, *w]
            for stage in ("embed", "fit-router", "zc-score", "allocate")
        },
        f"dmole train-task --task {second} (up to date)": ["train-task", "--task", second, *w],
        f"dmole eval --after {second} (up to date)": ["eval", "--after", second, *w],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    heavy: dict[str, list[str]] = {}
    for command in commands.values():  # warm-up: the file cache, and a report that is up to date
        run(command)
    for _ in range(args.repeats):
        for name, command in commands.items():
            seconds, heavy[name] = run(command)
            times[name].append(seconds)
    results = {
        name: {"median_s": statistics.median(values), "runs_s": values, "imports": heavy[name]}
        for name, values in times.items()
    }
    for name, r in results.items():
        print(f"{name:<50} {r['median_s']:6.2f} s   heavy imports: {', '.join(r['imports']) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
