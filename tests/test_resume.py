"""A train-task killed with SIGKILL resumes from its last checkpoint and ends with the same expert."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from dmole.stages.allocate import allocate
from dmole.stages.train_task import TrainTaskOptions, train_task
from dmole.stages.zc_score import zc_score
from tiny_sizes import small_lm, tiny_roe_inputs

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
    command = [
        sys.executable,
        "-m",
        "dmole.cli",
        "train-task",
        "--task",
        TASK,
        "--epochs",
        "12",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--checkpoint-every",
        "2",
        "-q",
        "--workspace",
        str(project.root),
    ]
    process = subprocess.Popen(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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


@pytest.mark.slow  # about 30 s; the same checkpoint machinery is covered by the killed train-task test
def test_killed_route_train_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """Killed during RoE's training (after its dense twin finished), route-train resumes from its checkpoint:
    the twin is not trained again, and the RoE and backbone weights equal an uninterrupted run's."""
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project
    from dmole.stages.route_train import route_train

    tiny_roe_inputs(tmp_path, small_lm())
    options = {
        "epochs": 24,
        "batch_size": 4,
        "roe_lr": 1e-2,
        "backbone_lr": 1e-3,
        "eval_batch_size": 4,
        "max_eval_samples": 1,
        "checkpoint_every": 2,
        "stage2_mode": "full",
    }
    projects = []
    for name in ("reference", "killed"):
        create_workspace(
            tmp_path / name, model=tmp_path / "model", data=tmp_path / "data", seed=0, stages={"route-train": options}
        )
        projects.append(Project.open(tmp_path / name))
    reference, project = projects
    expected = route_train(reference).version

    process = subprocess.Popen(
        [sys.executable, "-m", "dmole.cli", "route-train", "-q", "--workspace", str(project.root)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = project.root / ".runs"
    deadline = time.monotonic() + 300
    while not list(runs.rglob("roe/checkpoint.pt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert process.poll() is None, "route-train finished before it could be killed; make the run longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(runs.rglob("dense_scores.json")) and project.store.latest("route-train", "all") is None

    resumed = route_train(project).version
    assert resumed.manifest["summary"]["resumed_from"] > 0
    for name in ("roe_weights.safetensors", "backbone.safetensors"):
        ours, theirs = load_file(resumed.file(name)), load_file(expected.file(name))
        assert ours.keys() == theirs.keys()
        for key, tensor in theirs.items():
            assert (ours[key] - tensor).abs().max() <= 1e-6, (name, key)
    assert not list(runs.rglob("checkpoint.pt"))  # cleaned up after the commit
