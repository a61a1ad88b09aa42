"""A train-task killed with SIGKILL resumes from its last checkpoint and ends with the same expert."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

from stages.allocate import allocate
from stages.train_task import TrainTaskOptions, train_task
from stages.zc_score import zc_score

TASK = "shape-caption"
OPTIONS = TrainTaskOptions(epochs=12, batch_size=4, lr=3e-3, checkpoint_every=2)


def _prepare(project):
    zc_score(project, TASK)
    allocate(project, TASK)


def _expert_weights(result):
    return load_file(result.version.file("expert/adapter_model.safetensors"))


def test_killed_training_resumes_and_matches_an_uninterrupted_run(make_project):
    reference_project = make_project("reference")
    _prepare(reference_project)
    reference = _expert_weights(train_task(reference_project, TASK, OPTIONS))

    project = make_project("killed")
    _prepare(project)
    command = [sys.executable, "-m", "dmole_cli", "train-task", "--task", TASK, "--epochs", "12", "--batch-size", "4",
               "--lr", "3e-3", "--checkpoint-every", "2", "-q", "--workspace", str(project.root)]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = project.root / ".runs"
    deadline = time.monotonic() + 120
    while not list(runs.rglob("checkpoint.pt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get past the checkpoint, into the next interval
    assert process.poll() is None, "training finished before it could be killed; make the run longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert project.store.latest("train-task", TASK) is None  # nothing committed by the killed run

    resumed = train_task(project, TASK, OPTIONS)
    summary = resumed.version.manifest["summary"]
    assert summary["resumed_from"] > 0 and summary["resumed_from"] % OPTIONS.checkpoint_every == 0
    assert summary["steps"] - summary["resumed_from"] < summary["steps"]
    weights = _expert_weights(resumed)
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        assert (weights[name] - tensor).abs().max() <= 1e-6, name
    assert not list(runs.rglob("checkpoint.pt"))  # cleaned up after the commit
