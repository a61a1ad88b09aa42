"""Bad input ends with one clear line, a non-zero exit status and no new artifact."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from dmole_cli.app import app
from stages.init import create_workspace
from stages.project import Project

runner = CliRunner()
TASK = "color-vqa"


@pytest.fixture
def private(micro_bench, tmp_path):
    """A workspace over a private copy of the micro data, so a test may damage it."""
    data = tmp_path / "data"
    shutil.copytree(micro_bench / "data", data)
    create_workspace(tmp_path / "ws", model=micro_bench / "base-model", data=data)
    return Project.open(tmp_path / "ws")


def fails(project, *args, match: str) -> str:
    before = sorted(p.relative_to(project.root) for p in project.root.rglob("*") if p.is_file())
    result = runner.invoke(app, [*args, "--workspace", str(project.root)])
    after = sorted(p.relative_to(project.root) for p in project.root.rglob("*") if p.is_file())
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert match in lines[0], lines[0]
    assert before == after, "a failing command must not write anything"
    return lines[0]


def _rewrite_line(path, index, new_line):
    lines = path.read_text().splitlines()
    lines[index] = new_line
    path.write_text("\n".join(lines) + "\n")


def test_unknown_task(private):
    fails(private, "embed", "--task", "no-such-task", match="unknown task 'no-such-task'")


def test_missing_data_folder(private, tmp_path):
    shutil.rmtree(tmp_path / "data")
    fails(private, "embed", "--task", TASK, match="data folder does not exist")


def test_jsonl_line_that_is_not_json(private, tmp_path):
    train = tmp_path / "data" / TASK / "train.jsonl"
    _rewrite_line(train, 2, '{"image": "broken",')
    fails(private, "embed", "--task", TASK, match=f"{train}:3: not valid JSON")


def test_missing_image_file(private, tmp_path):
    train = tmp_path / "data" / TASK / "train.jsonl"
    record = json.loads(train.read_text().splitlines()[0])
    (tmp_path / "data" / record["image"]).unlink()
    fails(private, "embed", "--task", TASK, match=f"{train}:1: field 'image': image file")


def test_image_path_escaping_the_data_root(private, tmp_path):
    train = tmp_path / "data" / TASK / "train.jsonl"
    record = json.loads(train.read_text().splitlines()[0])
    (tmp_path / "outside.png").write_bytes(b"not inside")
    record["image"] = "../outside.png"
    _rewrite_line(train, 0, json.dumps(record))
    fails(private, "embed", "--task", TASK, match="escapes the data root")


def test_fit_router_before_embed(private):
    fails(private, "fit-router", "--task", TASK, match=f"no 'embed' artifact for task '{TASK}'")


def test_corrupted_safetensors_in_the_workspace(private):
    assert runner.invoke(app, ["embed", "--task", TASK, "--workspace", str(private.root)]).exit_code == 0
    assert runner.invoke(app, ["fit-router", "--task", TASK, "--workspace", str(private.root)]).exit_code == 0
    weights = private.store.latest("fit-router", TASK).path / "router.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    fails(private, "show", "fit-router", match="router.safetensors was modified after it was written")


def test_allocating_tasks_out_of_order(private):
    second = private.config.task_names[1]
    assert runner.invoke(app, ["zc-score", "--task", second, "--workspace", str(private.root)]).exit_code == 0
    fails(private, "allocate", "--task", second, match="no 'allocate' artifact for task 'shape-caption'")


@pytest.mark.parametrize("budget", ["-1", "1.5", "lots"])
def test_budget_out_of_range(private, budget):
    fails(private, "allocate", "--task", TASK, "--budget", budget, match="budget")


def test_workspace_config_with_unknown_keys(private):
    path = private.root / "workspace.json"
    config = json.loads(path.read_text())
    config["learning_rate"] = 1
    path.write_text(json.dumps(config))
    fails(private, "tasks", match="learning_rate: Extra inputs are not permitted")


def test_two_writers_of_the_same_task_are_refused(private):
    with private.store.lock("embed", TASK):
        fails(private, "embed", "--task", TASK, match="is being written by another process")


def test_tampered_manifest_checksum(private):
    assert runner.invoke(app, ["embed", "--task", TASK, "--workspace", str(private.root)]).exit_code == 0
    manifest_path = private.store.latest("embed", TASK).path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    next(o for o in manifest["outputs"] if o["path"] == "train.parquet")["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    fails(private, "fit-router", "--task", TASK, match="checksum does not match its manifest")


def test_unknown_model_family(micro_bench, tmp_path):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = runner.invoke(app, ["init", "--model", str(model), "--data", str(micro_bench / "data"),
                                 "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "model_type 'bert' is not a supported family" in result.output
    assert not (tmp_path / "ws").exists()
