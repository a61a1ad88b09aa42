"""Training speed on a CPU shared with another job, under dmole's default threads (one per usable core, torch's
spinning waits; stages/threads.py) and the settings that avoid oversubscription, side by side: each setting
alone, then with a competing two-thread torch process running.

    python bench/shared_cpu.py -w dmole-demo/workspace [--repeats 3]

One run is a short train-task loop (seq-lora on `--task`, a fraction of an epoch, as bench/input_pipeline.py runs
it) in a fresh process, so that OpenMP reads the setting at start. Medians per setting and load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from emit import emit

CORES = str(len(os.sched_getaffinity(0)))
SETTINGS = {
    "dmole's default (threads = usable cores, spinning waits)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"DMOLE_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}
ONE_RUN = (
    "import sys; sys.path[:0] = [{bench!r}]; from pathlib import Path; "
    "from input_pipeline import one_run; from dmole.stages.project import Project; "
    "p = Project.open(Path({workspace!r})); one_run(p, {task!r}, 0, 0.05); "
    "print(one_run(p, {task!r}, 0, {epochs})['seconds'])"
)
COMPETITOR = "import torch; torch.set_num_threads(2); a = torch.randn(384, 384)\nwhile True: a = (a @ a).tanh()"


def timed(code: str, env: dict) -> float:
    inherited = {k: v for k, v in os.environ.items() if k not in ("DMOLE_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**inherited, **env}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-400:])
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--task", default="shape-caption")
    parser.add_argument("--epochs", type=float, default=0.34)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    bench = str(Path(__file__).resolve().parent)
    code = ONE_RUN.format(bench=bench, workspace=str(args.workspace.resolve()), task=args.task, epochs=args.epochs)
    results = {}
    for load in ("alone", "with a competing 2-thread torch job"):
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if load != "alone" else None
        try:
            time.sleep(2 if competitor else 0)
            runs = {name: [] for name in SETTINGS}
            for _ in range(args.repeats):
                for name, env in SETTINGS.items():  # interleaved
                    runs[name].append(timed(code, env))
        finally:
            if competitor:
                competitor.kill()
        results[load] = {name: {"median_s": statistics.median(v), "runs_s": v} for name, v in runs.items()}
    emit(
        {"cores": len(os.sched_getaffinity(0)), "task": args.task, "epochs": args.epochs, "results": results}, args.json
    )


if __name__ == "__main__":
    main()
