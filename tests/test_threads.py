"""Thread choice: a fixed function of the machine (never of its load), an explicit setting winning, and a line
when a stage's inputs were computed with another count."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmole.stages import threads
from dmole.stages.errors import UserError


def test_the_count_is_the_usable_cores_unless_set():
    assert threads.chosen_threads({}) == len(os.sched_getaffinity(0))


def test_an_explicit_setting_wins():
    assert threads.chosen_threads({"DMOLE_THREADS": "3"}) == 3
    assert threads.chosen_threads({"OMP_NUM_THREADS": "1"}) is None  # torch already follows it
    with pytest.raises(UserError, match="DMOLE_THREADS must be a positive whole number"):
        threads.chosen_threads({"DMOLE_THREADS": "two"})


def test_a_mismatch_is_one_line_naming_both_counts():
    line = threads.thread_mismatch("input embed/a v1", 2, 1)
    assert "\n" not in line and "1 CPU thread(s)" in line and "uses 2" in line and "DMOLE_THREADS=1" in line
    assert threads.thread_mismatch("input embed/a v1", 2, 2) is None
    assert threads.thread_mismatch("input embed/a v1", 2, None) is None  # made before counts were recorded


def _busy(seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"]
    )


def _train(workspace: Path, env: dict) -> tuple[int, bytes]:
    """The thread count train-task recorded, and the bytes of the weights it wrote."""
    import json

    subprocess.run(
        [
            sys.executable,
            "-m",
            "dmole.cli",
            "train-task",
            "--task",
            "shape-caption",
            "--method",
            "seq-lora",
            "-q",
            "--workspace",
            str(workspace),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    version = workspace / "seq-lora.train-task" / "shape-caption" / "v1"
    threads_used = json.loads((version / "manifest.json").read_text())["environment"]["cpu_threads"]
    return threads_used, b"".join(p.read_bytes() for p in sorted(version.rglob("*.safetensors")))


@pytest.mark.slow  # about a minute: two CLI runs, one beside busy loops on every core
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to load one of them")
def test_training_beside_a_competing_load_gives_the_same_bytes(make_project, tmp_path):
    """Before, each model load took the cores idle at that moment: beside another job a stage computed with fewer
    threads, and its sums, and so its weights, differed."""
    quiet, loaded = make_project("quiet").root, tmp_path / "loaded"
    shutil.copytree(quiet, loaded)
    env = {k: v for k, v in os.environ.items() if k not in ("DMOLE_THREADS", "OMP_NUM_THREADS")}
    alone = _train(quiet, env)
    competitors = [_busy(120) for _ in os.sched_getaffinity(0)]
    try:
        beside = _train(loaded, env)
    finally:
        for competitor in competitors:
            competitor.kill()
    cores = len(os.sched_getaffinity(0))
    assert alone[0] == beside[0] == cores  # the count that decides the sums ignores the competitors
    assert alone[1] and alone[1] == beside[1]


def test_a_stage_says_when_its_inputs_used_another_thread_count(make_project, monkeypatch):
    import torch

    from dmole.stages.embed import embed
    from dmole.stages.fit_router import fit_router

    project = make_project()
    monkeypatch.setenv("DMOLE_THREADS", "1")
    embed(project, "color-vqa")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as a rerun on another machine, or with another DMOLE_THREADS, would
    try:
        result = fit_router(project, "color-vqa")
    finally:
        torch.set_num_threads(before)
    assert any("computed with 1 CPU thread(s) and this run uses 2" in w for w in result.warnings)
    assert not [w for w in fit_router(project, "color-vqa", force=True).warnings if "CPU thread" in w]


def test_a_manifest_records_the_cpu_model_and_kernels_the_sums_came_from(make_project):
    """Another CPU model runs other kernels (torch dispatches on the instruction set), so other sums."""
    import torch

    from dmole.stages.device import cpu_name
    from dmole.stages.embed import embed

    environment = embed(make_project(), "color-vqa").version.manifest["environment"]
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["device_name"] == cpu_name() and cpu_name()
    if os.path.exists("/proc/cpuinfo"):
        assert cpu_name() in Path("/proc/cpuinfo").read_text(encoding="utf-8")
