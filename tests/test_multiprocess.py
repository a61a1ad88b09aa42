"""The heavy stages under `accelerate launch --num_processes 2` (gloo, CPU) give the single-process artifacts."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_parquet, table_to_numpy
from dmole.cli.app import app
from tiny_sizes import small_lm, tiny_roe_inputs

# LoRA dropout draws different masks in each process, so the comparison trains without it.
METHODS = {"dmole": {"dropout": 0.0}}
# Each process weights its token-mean loss by its share of the batch's supervised tokens, so a data-parallel
# step is the single-process step up to float summation order (measured: 2e-6 max abs after three steps).
EXPERT_TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# FSDP2, exactly as a user asks for it (on the CPU the processes join over gloo and dmole shards with torch's
# fully_shard; accelerate itself shards only on GPUs)
FSDP2 = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_reshard_after_forward", "true")


def launch_command(project, *args: str, launcher: tuple[str, ...] = ("--multi_gpu",)) -> list[str]:
    """One dmole command as two processes under accelerate's launcher (DDP, or ``launcher=FSDP2``)."""
    return _accelerate_launch(launcher) + ["-m", "dmole.cli", *args, "--workspace", str(project.root)]


def _accelerate_launch(launcher: tuple[str, ...]) -> list[str]:
    """accelerate's launcher starting two processes on this machine, up to the program they run."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]


def _run_launched(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def launched(project, *args: str, launcher: tuple[str, ...] = ("--multi_gpu",)) -> str:
    """Run one dmole command as two processes under accelerate's launcher (DDP, or ``launcher=FSDP2``)."""
    return _run_launched(launch_command(project, *args, launcher=launcher))


def launched_together(project, commands: list[list[str]], launcher: tuple[str, ...] = ("--multi_gpu",)) -> str:
    """Run dmole commands one after another in the same two launched processes (tests/launch_commands.py): each
    launch costs two interpreters' start, about 9 s here, so consecutive launched stages share one."""
    script = str(Path(__file__).with_name("launch_commands.py"))
    commands = [[*args, "--workspace", str(project.root)] for args in commands]
    return _run_launched(_accelerate_launch(launcher) + [script, json.dumps(commands)])


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
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    projects = []
    for name in ("one", "two"):
        root = tmp_path_factory.mktemp(name) / "ws"
        create_workspace(
            root, model=micro_bench / "base-model", data=micro_bench / "data", stages=MICRO_STAGES, methods=METHODS
        )
        projects.append(Project.open(root))
    one, two = projects
    first, second = tasks = one.config.task_names[:2]

    def command(stage: str, task: str, *rest: str) -> list[str]:
        return [stage, "--after" if stage == "eval" else "--task", task, *rest]

    # (launched in `two`?, commands): each launch costs two interpreters' start (about 9 s here), so consecutive
    # launched commands share one; the second task's train-task routes the first one's expert in
    plan = [
        (True, [command("embed", first), command("zc-score", first)]),
        (False, [command("embed", task) for task in one.config.task_names[1:]]),  # eval routes every task's samples
        (False, [command("fit-router", first), command("allocate", first)]),
        (True, [command("train-task", first, "-q")]),
        (False, [command("eval", first, "-q"), *(command(s, second) for s in ("fit-router", "zc-score", "allocate"))]),
        (True, [command("train-task", second, "-q"), command("eval", second, "-q")]),
    ]
    for in_two_processes, commands in plan:
        for args in commands:
            single(one, *args)
        if in_two_processes:
            launched_together(two, commands)
        else:
            for args in commands:
                single(two, *args)
    return one, two, tasks


def test_embeddings_and_scores_match_one_process(twin_runs):
    one, two, tasks = twin_runs
    for task in tasks[:1]:  # the launched ones
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
    for after in tasks[1:]:  # the launched one
        ours, reference = _latest(two, "eval", after), _latest(one, "eval", after)
        for task in one.config.task_names:
            name = f"predictions/{task}.parquet"
            mine, theirs = read_parquet(ours.file(name)).to_pydict(), read_parquet(reference.file(name)).to_pydict()
            assert mine["sample_id"] == theirs["sample_id"] and mine["prediction"] == theirs["prediction"], task
            assert mine["routed_tasks"] == theirs["routed_tasks"]


def test_manifests_record_the_launch(twin_runs):
    one, two, tasks = twin_runs
    for stage, task in (("embed", tasks[0]), ("zc-score", tasks[0]), ("train-task", tasks[1]), ("eval", tasks[1])):
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
ROE_STAGES = {
    "route-train": {
        "epochs": 2,
        "batch_size": 4,
        "roe_lr": 1e-2,
        "backbone_lr": 1e-3,
        "eval_batch_size": 4,
        "max_eval_samples": 2,
    }
}
ROE_TOLERANCE = 1e-5


# full is slow: its launch mechanism is frozen's, and the backbone's gradients under the launcher are train-task's
@pytest.fixture(scope="module", params=["frozen", pytest.param("full", marks=pytest.mark.slow)])
def roe_twins(request, tmp_path_factory):
    """route-train in one process and under a two-process launcher, with ``stage2_mode`` frozen or full."""
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    base = tmp_path_factory.mktemp(f"roe-{request.param}")
    tiny_roe_inputs(base, small_lm())
    projects = []
    for name, run in (("one", single), ("ddp", launched), ("fsdp2", lambda *a: launched(*a, launcher=FSDP2))):
        create_workspace(base / name, model=base / "model", data=base / "data", seed=0, stages=ROE_STAGES)
        project = Project.open(base / name)
        run(project, "route-train", "--stage2-mode", request.param, "-q")
        projects.append(project)
    return projects


@pytest.mark.parametrize("launch", ["ddp", "fsdp2"])
def test_launched_route_train_matches_one_process(roe_twins, launch):
    """RoE's modules sit inside the wrapped (or sharded) model, so their gradients are averaged over processes,
    and each sample's stage-0 skips are seeded by the sample: the weights agree and so do the skip decisions."""
    one, ddp, fsdp2 = roe_twins
    ours, reference = (_latest(p, "route-train", "all") for p in ({"ddp": ddp, "fsdp2": fsdp2}[launch], one))
    names = ["roe_weights.safetensors"] + (
        ["backbone.safetensors"] if reference.manifest["config"]["options"]["stage2_mode"] == "full" else []
    )
    for name in names:
        mine, theirs = load_file(ours.file(name)), load_file(reference.file(name))
        assert mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine)
        worst = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
        assert worst <= ROE_TOLERANCE, (name, worst)
    decisions = [read_parquet(v.file("routing_decisions.parquet")).to_pydict() for v in (ours, reference)]
    assert decisions[0]["decided_skip"] == decisions[1]["decided_skip"]
    assert decisions[0]["applied_skip"] == decisions[1]["applied_skip"]
    assert ours.manifest["environment"]["world_size"] == 2
    assert ours.manifest["summary"]["sharding"] == ("fsdp2" if launch == "fsdp2" else None)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, micro_bench):
    """Two D-MoLE tasks trained in one process and as two FSDP2-sharded processes (the second task routes the
    first one's frozen expert in)."""
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    projects = []
    for name in ("whole", "sharded"):
        root = tmp_path_factory.mktemp(name) / "ws"
        create_workspace(
            root,
            model=micro_bench / "base-model",
            data=micro_bench / "data",
            stages=MICRO_STAGES,
            methods=METHODS,
            tasks=["color-vqa", "shape-choice"],
        )
        projects.append(Project.open(root))
    for project in projects:
        for task in project.config.task_names:
            for stage in ("embed", "fit-router", "zc-score", "allocate"):
                single(project, stage, "--task", task)
    names = projects[0].config.task_names
    for task in names:
        single(projects[0], "train-task", "--task", task, "-q")
    launched_together(projects[1], [["train-task", "--task", task, "-q"] for task in names], launcher=FSDP2)
    return projects


def test_fsdp2_train_task_matches_one_process_and_saves_whole_experts(fsdp_runs):
    from peft import PeftModel

    from dmole.stages.models.registry import load_family

    whole, sharded = fsdp_runs
    for task in whole.config.task_names:
        ours = load_file(_latest(sharded, "train-task", task).file("expert/adapter_model.safetensors"))
        reference = load_file(_latest(whole, "train-task", task).file("expert/adapter_model.safetensors"))
        assert ours.keys() == reference.keys()
        assert all(ours[k].shape == reference[k].shape for k in ours)  # whole tensors, not shards
        worst = max(float((ours[k] - reference[k]).abs().max()) for k in ours)
        assert worst <= EXPERT_TOLERANCE, (task, worst)
        manifest = _latest(sharded, "train-task", task).manifest
        assert manifest["summary"]["sharding"] == "fsdp2" and manifest["environment"]["world_size"] == 2
        assert _latest(whole, "train-task", task).manifest["summary"]["sharding"] is None
    folder = _latest(sharded, "train-task", "shape-choice").path / "expert"
    PeftModel.from_pretrained(load_family(whole.model_path).model, folder)  # loads in one process, as saved


def _kill_every_process_of(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker``, and wait until they are gone."""
    import signal
    import time
    from pathlib import Path

    def matching() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                        found.append(int(proc.name))
                except OSError:
                    continue
        return found

    for pid in matching():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        Path(f"/proc/{pid}/status").is_file() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        for pid in matching()
    ):
        time.sleep(0.1)


@pytest.mark.slow  # about 35 s; killed-and-resumed training and FSDP2 equivalence are each covered by faster tests
def test_fsdp2_train_task_killed_resumes_to_the_uninterrupted_expert(tmp_path, micro_bench):
    """A sharded run killed with SIGKILL resumes from its checkpoint (whole tensors, the optimizer state by
    parameter name, every process's RNG) and ends with the expert an uninterrupted single-process run trains."""
    import time

    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    task, flags = "color-vqa", ("--epochs", "8", "--checkpoint-every", "2")
    projects = []
    for name in ("whole", "killed"):
        create_workspace(
            tmp_path / name,
            model=micro_bench / "base-model",
            data=micro_bench / "data",
            stages=MICRO_STAGES,
            methods=METHODS,
            tasks=[task],
        )
        project = Project.open(tmp_path / name)
        for stage in ("zc-score", "allocate"):
            single(project, stage, "--task", task)
        projects.append(project)
    whole, killed = projects
    single(whole, "train-task", "--task", task, *flags, "-q")
    command = launch_command(killed, "train-task", "--task", task, *flags, "-q", launcher=FSDP2)
    process = subprocess.Popen(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while (
        not list((killed.root / ".runs").rglob("checkpoint.pt"))
        and time.monotonic() < deadline
        and process.poll() is None
    ):
        time.sleep(0.05)
    time.sleep(0.5)
    assert process.poll() is None, "training finished before it could be killed; make the run longer"
    _kill_every_process_of(str(killed.root))  # the launcher and both workers (elastic may regroup them)
    process.wait()
    assert killed.store.latest("train-task", task) is None
    launched(killed, "train-task", "--task", task, *flags, "-q", launcher=FSDP2)
    resumed = _latest(killed, "train-task", task)
    assert resumed.manifest["summary"]["resumed_from"] > 0 and resumed.manifest["summary"]["sharding"] == "fsdp2"
    ours = load_file(resumed.file("expert/adapter_model.safetensors"))
    reference = load_file(_latest(whole, "train-task", task).file("expert/adapter_model.safetensors"))
    worst = max(float((ours[k] - reference[k]).abs().max()) for k in ours)
    assert worst <= EXPERT_TOLERANCE, worst


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "fsdp2"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "NO_SHARD"}, None),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"},
            "fsdp_version: 2",
        ),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ZeRO-3 is not supported"),
    ],
)
def test_what_the_launcher_asks_to_shard(monkeypatch, env, expected):
    from dmole.stages.distributed import parameter_sharding
    from dmole.stages.errors import UserError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if expected in ("fsdp2", None):
        assert parameter_sharding() == expected
    else:
        with pytest.raises(UserError, match=expected):
            parameter_sharding()


@pytest.mark.parametrize("method", ["ewc-lora", "o-lora"])
def test_penalties_on_the_parameters_are_refused_under_fsdp2(make_project, monkeypatch, method):
    from dmole.stages.errors import UserError
    from dmole.stages.train_task import train_task

    project = make_project()
    for key, value in {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="reads the parameters themselves"):
        train_task(project, project.config.task_names[0], {"method": method})
