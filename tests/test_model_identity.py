"""The model is an input of every artifact, known by its content: a workspace whose model folder was replaced,
changed or deleted marks what was built on the old one stale and refuses to use it (one line), and a workspace
reached by another path or moved with its model is the same workspace."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmole.cli.app import app
from dmole.stages.init import create_workspace

runner = CliRunner()
TASK = "color-vqa"


def dmole(workspace: Path, *args: str):
    return runner.invoke(app, [*args, "--workspace", str(workspace)])


def ok(workspace: Path, *args: str) -> str:
    result = dmole(workspace, *args)
    assert result.exit_code == 0, result.output
    return result.output


def one_line_error(workspace: Path, *args: str) -> str:
    result = dmole(workspace, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def statuses(workspace: Path) -> dict[str, str]:
    return {r["stage"]: r["status"] for r in json.loads(ok(workspace, "ls", "--json"))}


def stale_because(workspace: Path, stage: str) -> list[str]:
    return json.loads(ok(workspace, "show", stage, "--task", TASK, "--json"))["artifacts"][0]["stale_because"]


@pytest.fixture
def built(micro_bench, tmp_path) -> Path:
    """A bench folder of its own (model, data, workspace; relative paths) with `embed` and `fit-router` of one task."""
    bench = tmp_path / "bench"
    for folder in ("base-model", "data"):
        shutil.copytree(micro_bench / folder, bench / folder)
    workspace = bench / "workspace"
    create_workspace(
        workspace,
        model=bench / "base-model",
        data=bench / "data",
        tasks=[TASK],
        stages={"fit-router": {"batch_size": 8, "max_epochs": 5}},
    )
    ok(workspace, "embed", "--task", TASK)
    ok(workspace, "fit-router", "--task", TASK)
    assert statuses(workspace) == {"embed": "ok", "fit-router": "ok"}
    return workspace


def test_a_model_swapped_for_another_family_makes_everything_stale_and_is_refused_in_one_line(built):
    from dmole.stages.models.tiny import build_tiny

    model = built.parent / "base-model"
    shutil.rmtree(model)
    build_tiny("qwen2vl", model, seed=1)
    assert statuses(built) == {"embed": "stale", "fit-router": "stale"}
    assert stale_because(built, "fit-router") == [
        "fit-router/color-vqa v1 was built on another model than the workspace's model now"
    ]
    error = one_line_error(built, "fit-router", "--task", TASK, "--force")
    assert "embed/color-vqa v1 was built on another model" in error and "re-run embed for color-vqa" in error


def test_a_changed_model_makes_its_artifacts_stale(built):
    config = built.parent / "base-model" / "config.json"
    config.write_text(config.read_text().replace("\n", "\n ", 1))  # any change of content
    assert statuses(built) == {"embed": "stale", "fit-router": "stale"}
    assert "was built on another model" in one_line_error(built, "fit-router", "--task", TASK)


def test_a_deleted_model_folder_is_one_line_and_ls_marks_everything_stale(built):
    shutil.rmtree(built.parent / "base-model")
    assert statuses(built) == {"embed": "stale", "fit-router": "stale"}
    assert stale_because(built, "embed") == ["the model embed/color-vqa v1 was built on is missing"]
    for command in (("embed", "--task", TASK), ("fit-router", "--task", TASK), ("eval", "--after", "zero-shot")):
        error = one_line_error(built, *command)
        assert "the workspace's model folder" in error and "base-model" in error and "is missing" in error, command


def test_a_moved_workspace_reached_by_any_path_is_up_to_date(built, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "bench"
    shutil.copytree(built.parent, moved)  # the model and the workspace together, as a user moves them
    shutil.rmtree(built.parent)
    monkeypatch.chdir(moved.parent)
    for workspace in (moved / "workspace", Path("bench/workspace"), Path("bench/../bench/workspace")):
        assert statuses(workspace) == {"embed": "ok", "fit-router": "ok"}
        assert "up to date" in ok(workspace, "embed", "--task", TASK)
        assert "up to date" in ok(workspace, "fit-router", "--task", TASK)
    embedded = json.loads(ok(moved / "workspace", "show", "embed", "--task", TASK, "--json"))["artifacts"][0]
    assert os.sep not in embedded["summary"]["model"] and len(embedded["summary"]["model"]) == 64  # a hash


def test_an_artifact_from_before_models_were_recorded_is_stale_once(built):
    """A version written before manifests recorded their model is read, reported stale with its reason, refused
    as an input in one line, and recomputed by its stage (not "up to date")."""
    for stage in ("embed", "fit-router"):
        path = built / stage / TASK / "v1" / "manifest.json"
        manifest = json.loads(path.read_text())
        del manifest["sources"]
        path.write_text(json.dumps(manifest))
    assert statuses(built) == {"embed": "stale", "fit-router": "stale"}
    legacy = "embed/color-vqa v1 was written before dmole recorded the model it is built on"
    assert stale_because(built, "embed") == [legacy]
    assert "re-run embed for color-vqa" in one_line_error(built, "fit-router", "--task", TASK)
    assert "wrote v2" in ok(built, "embed", "--task", TASK)
    assert "wrote v2" in ok(built, "fit-router", "--task", TASK)
    assert statuses(built) == {"embed": "ok", "fit-router": "ok"}


def test_a_large_file_is_known_by_a_sample_of_its_content_not_by_its_time(tmp_path, monkeypatch):
    """Over FULL_HASH_LIMIT a weights file is fingerprinted by its size and evenly spaced blocks: a copy (a new
    modification time) is the same file, a changed block is not."""
    from dmole.stages import runner

    monkeypatch.setattr(runner, "FULL_HASH_LIMIT", 2 << 20)
    original = tmp_path / "a" / "model.safetensors"
    original.parent.mkdir()
    original.write_bytes(os.urandom(3 << 20))
    copy = tmp_path / "b" / "model.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    os.utime(copy, ns=(0, 0))
    assert runner.fingerprint([copy]) == runner.fingerprint([original])
    assert runner.fingerprint([original])["model.safetensors"].startswith("sampled:")
    changed = bytearray(original.read_bytes())
    changed[-1] ^= 1  # the last block is always sampled
    copy.write_bytes(bytes(changed))
    assert runner.fingerprint([copy]) != runner.fingerprint([original])
