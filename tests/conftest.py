"""Shared fixtures: one micro synthetic benchmark per test session, and fresh workspaces over it."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from dmole.stages.data.synthetic import SynthSizes
from dmole.stages.init import create_workspace
from dmole.stages.pretrain import PretrainSettings
from dmole.stages.project import Project
from dmole.stages.synth import synthesize

# Two cores are shared with whatever else runs; one thread avoids oversubscription stalls (and model loads,
# which would otherwise use every usable core, keep it: stages/threads.py).
os.environ["DMOLE_THREADS"] = "1"
torch.set_num_threads(1)

MICRO_SIZES = SynthSizes(image_size=32, train_per_task=12, test_per_task=4, pretrain_samples=48, vision_samples=32)
MICRO_STAGES = {
    "fit-router": {"batch_size": 8, "max_epochs": 30, "quantile": 0.99},
    "train-task": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 1},
    "eval": {"batch_size": 4},
}


@pytest.fixture(scope="session")
def micro_bench(tmp_path_factory) -> Path:
    """A five-task benchmark with a briefly pre-trained tiny LLaVA (seconds, not minutes)."""
    out = tmp_path_factory.mktemp("micro")
    synthesize(out, sizes=MICRO_SIZES, pretraining=PretrainSettings(vision_epochs=1, epochs=1, batch_size=16))
    return out


@pytest.fixture
def make_project(micro_bench, tmp_path):
    """A new, empty workspace over the micro benchmark's data and model."""

    def make(name: str = "ws", stages: dict | None = None) -> Project:
        root = tmp_path / name
        create_workspace(
            root,
            model=micro_bench / "base-model",
            data=micro_bench / "data",
            stages=MICRO_STAGES if stages is None else stages,
        )
        return Project.open(root)

    return make


# A two-task D-MoLE loop through the CLI, as a user runs it on their own model folder.
PIPELINE_TASKS = ("color-vqa", "shape-choice")
PIPELINE_STAGES = {
    "fit-router": {"max_epochs": 20},
    "train-task": {"epochs": 1, "batch_size": 2},
    "eval": {"batch_size": 2},
}


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory) -> Path:
    """Two synthetic tasks' data at 32 px, four training and two test samples each."""
    from dmole.stages.data.synthetic import write_benchmark

    root = tmp_path_factory.mktemp("pipeline-data")
    write_benchmark(root, seed=0, sizes=SynthSizes(image_size=32, train_per_task=4, test_per_task=2))
    return root


@pytest.fixture
def run_cli_pipeline(pipeline_data):
    """init -> embed -> fit-router -> zc-score -> allocate for both tasks, then train-task -> eval after each,
    all through `dmole`; returns the workspace."""
    import json

    from typer.testing import CliRunner

    from dmole.cli.app import app

    runner = CliRunner()

    def dmole(workspace: Path, *args: str) -> None:
        result = runner.invoke(app, [*args, "--workspace", str(workspace)])
        assert result.exit_code == 0, result.output

    def run(model: Path, workspace: Path, profile: str = "dmole") -> Path:
        dmole(
            workspace,
            "init",
            "--model",
            str(model),
            "--data",
            str(pipeline_data),
            "--tasks",
            ",".join(PIPELINE_TASKS),
            "--profile",
            profile,
        )
        settings = json.loads((workspace / "workspace.json").read_text())
        (workspace / "workspace.json").write_text(json.dumps({**settings, "stages": PIPELINE_STAGES}))
        for task in PIPELINE_TASKS:
            for stage in ("embed", "fit-router", "zc-score", "allocate"):
                dmole(workspace, stage, "--task", task)
        for task in PIPELINE_TASKS:
            dmole(workspace, "train-task", "--task", task)
            dmole(workspace, "eval", "--after", task)
        return workspace

    return run


def imported_by(commands: list[list[str]], modules: tuple[str, ...]) -> tuple[list[str], dict[str, bool]]:
    """Run dmole commands one after another in a fresh interpreter: the lines they printed, and which of
    ``modules`` the interpreter had imported by the end."""
    code = (
        "import sys; from dmole.cli.app import app\n"
        f"for args in {commands!r}:\n"
        "    app(args, standalone_mode=False)\n"
        f"print(*(name in sys.modules for name in {modules!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    *printed, imported = done.stdout.strip().splitlines()
    return printed, dict(zip(modules, (word == "True" for word in imported.split())))


def safetensors_count(folder: Path) -> int:
    """How many tensors the folder's safetensors files hold, counted from their headers."""
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            total += len(list(handle.keys()))
    return total


class RecordedProgress:
    """A stage's Progress that draws nothing and records each bar as [description, total, steps advanced]."""

    def __init__(self):
        self.bars: list[list] = []

    @contextmanager
    def __call__(self, description: str, total: int):
        bar = [description, total, 0]
        self.bars.append(bar)

        class Tracker:
            def advance(self, steps: int = 1, **status: object) -> None:  # noqa: ARG002
                bar[2] += steps

        yield Tracker()
