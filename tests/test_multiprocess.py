"""The heavy stages under `accelerate launch --num_processes 2` (gloo, CPU) give the single-process artifacts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from artifacts.io import read_parquet, table_to_numpy
from dmole_cli.app import app
from conftest import MICRO_STAGES

# LoRA dropout draws different masks in each process, so the comparison trains without it.
METHODS = {"dmole": {"dropout": 0.0}}
# Each process weights its token-mean loss by its share of the batch's supervised tokens, so a data-parallel
# step is the single-process step up to float summation order (measured: 2e-6 max abs after three steps).
EXPERT_TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched(project, *args: str) -> str:
    """Run one dmole command as two processes under accelerate's launcher."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "dmole_cli", *args, "--workspace", str(project.root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def single(project, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--workspace", str(project.root)])
    assert result.exit_code == 0, result.output
    return result.output


def _latest(project, stage: str, task: str):
    return project.store.require(stage, task)


def _embeddings(project, task: str, split: str) -> np.ndarray:
    return table_to_numpy(read_parquet(_latest(project, "embed", task).file(f"{split}.parquet")), "embedding")


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory, micro_bench):
    """The same two-task D-MoLE sequence, in one process and as two launched processes."""
    from stages.init import create_workspace
    from stages.project import Project

    projects = []
    for name in ("one", "two"):
        root = tmp_path_factory.mktemp(name) / "ws"
        create_workspace(root, model=micro_bench / "base-model", data=micro_bench / "data", stages=MICRO_STAGES,
                         methods=METHODS)
        projects.append(Project.open(root))
    one, two = projects
    tasks = one.config.task_names[:2]
    for project, run in ((one, single), (two, launched)):
        for task in one.config.task_names:  # eval routes every task's test samples
            (run if task in tasks else single)(project, "embed", "--task", task)
    for task in tasks:
        for project, run in ((one, single), (two, launched)):
            single(project, "fit-router", "--task", task)  # light stages run as one process in both
            run(project, "zc-score", "--task", task)
            single(project, "allocate", "--task", task)
            run(project, "train-task", "--task", task, "-q")
            run(project, "eval", "--after", task, "-q")
    return one, two, tasks


def test_embeddings_and_scores_match_one_process(twin_runs):
    one, two, tasks = twin_runs
    for task in tasks:
        for split in ("train", "test"):
            np.testing.assert_allclose(_embeddings(two, task, split), _embeddings(one, task, split), atol=1e-5)
        ours = read_parquet(_latest(two, "zc-score", task).file("scores.parquet")).to_pydict()
        reference = read_parquet(_latest(one, "zc-score", task).file("scores.parquet")).to_pydict()
        assert ours["module"] == reference["module"]
        np.testing.assert_allclose(ours["score"], reference["score"], rtol=1e-5, atol=1e-5)


def test_trained_experts_match_one_process_within_tolerance(twin_runs):
    one, two, tasks = twin_runs
    for task in tasks:
        ours = load_file(_latest(two, "train-task", task).file("expert/adapter_model.safetensors"))
        reference = load_file(_latest(one, "train-task", task).file("expert/adapter_model.safetensors"))
        assert ours.keys() == reference.keys()
        worst = max(float((ours[k] - reference[k]).abs().max()) for k in ours)
        assert worst <= EXPERT_TOLERANCE, (task, worst)
        assert any(float(reference[k].abs().max()) > 10 * EXPERT_TOLERANCE for k in reference)  # trained, not zeros


def test_eval_predictions_are_identical(twin_runs):
    one, two, tasks = twin_runs
    for after in tasks:
        ours, reference = _latest(two, "eval", after), _latest(one, "eval", after)
        for task in one.config.task_names:
            name = f"predictions/{task}.parquet"
            mine, theirs = read_parquet(ours.file(name)).to_pydict(), read_parquet(reference.file(name)).to_pydict()
            assert mine["sample_id"] == theirs["sample_id"] and mine["prediction"] == theirs["prediction"], task
            assert mine["routed_tasks"] == theirs["routed_tasks"]


def test_manifests_record_the_launch(twin_runs):
    one, two, tasks = twin_runs
    for stage in ("embed", "zc-score", "train-task", "eval"):
        task = tasks[0]
        environment = _latest(two, stage, task).manifest["environment"]
        assert environment["world_size"] == 2 and environment["distributed_type"] == "MULTI_CPU", stage
        assert _latest(one, stage, task).manifest["environment"]["world_size"] == 1
    assert not (two.root / ".runs" / "parts" / "embed" / tasks[0]).exists()  # the per-process parts are merged away


def test_a_launched_stage_that_is_up_to_date_writes_nothing(twin_runs):
    _, two, tasks = twin_runs
    before = _latest(two, "embed", tasks[0]).number
    assert "up to date" in launched(two, "embed", "--task", tasks[0])
    assert _latest(two, "embed", tasks[0]).number == before


# RoE on a tiny random model: two launched processes against one, in both stage-2 modes.
ROE_SIZE = dict(lm_layers=4, lm_hidden=64, lm_heads=2, lm_kv_heads=1, lm_intermediate=128, vision_layers=1,
                vision_hidden=32, vision_heads=1, vision_intermediate=64, image_size=16, patch_size=8)
ROE_STAGES = {"route-train": {"epochs": 2, "batch_size": 4, "roe_lr": 1e-2, "backbone_lr": 1e-3,
                              "eval_batch_size": 4, "max_eval_samples": 2}}
ROE_TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=["frozen", "full"])
def roe_twins(request, tmp_path_factory):
    """route-train in one process and under a two-process launcher, with ``stage2_mode`` frozen or full."""
    from stages.data.synthetic import SynthSizes, write_benchmark
    from stages.init import create_workspace
    from stages.models.tiny import TinySize, build_tiny
    from stages.project import Project

    base = tmp_path_factory.mktemp(f"roe-{request.param}")
    write_benchmark(base / "data", sizes=SynthSizes(image_size=16, train_per_task=4, test_per_task=2))
    build_tiny("llava", base / "model", size=TinySize(**ROE_SIZE))
    projects = []
    for name, run in (("one", single), ("two", launched)):
        create_workspace(base / name, model=base / "model", data=base / "data", seed=0, stages=ROE_STAGES)
        project = Project.open(base / name)
        run(project, "route-train", "--stage2-mode", request.param, "-q")
        projects.append(project)
    return projects


def test_launched_route_train_matches_one_process(roe_twins):
    """RoE's modules sit inside the wrapped model, so their gradients are averaged over processes, and each
    sample's stage-0 skips are seeded by the sample: the weights agree and so do the skip decisions."""
    one, two = roe_twins
    ours, reference = (_latest(p, "route-train", "all") for p in (two, one))
    mine, theirs = load_file(ours.file("roe_weights.safetensors")), load_file(reference.file("roe_weights.safetensors"))
    assert mine.keys() == theirs.keys()
    worst = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
    assert worst <= ROE_TOLERANCE, worst
    decisions = [read_parquet(v.file("routing_decisions.parquet")).to_pydict() for v in (ours, reference)]
    assert decisions[0]["decided_skip"] == decisions[1]["decided_skip"]
    assert decisions[0]["applied_skip"] == decisions[1]["applied_skip"]
    assert ours.manifest["environment"]["world_size"] == 2
