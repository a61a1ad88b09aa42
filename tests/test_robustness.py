"""Hostile input thrown at the CLI: each case ends with one clear line, exit status 2, no new artifact and
nothing previously written lost.

Cases: a truncated, a non-UTF-8 and a non-JSON JSONL line; wrong field types; absurd sizes (a line over the
line limit, an image over the pixel limit, a zero batch size); files that are not images; image paths that
are absolute, climb out with `..` or are symlinks out of the data root; a missing data folder or image; an
unknown task; a workspace config with unknown keys; a tampered manifest and tampered safetensors; an unknown
model family; `--budget` out of range; tasks in the wrong order; a stage run before its input; two writers
of the same task (a lock); and a writer killed with SIGKILL in the middle of writing a version.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import pytest
from typer.testing import CliRunner

from dmole.artifacts.layout import LOCK
from dmole.cli.app import app
from dmole.stages.init import create_workspace
from dmole.stages.project import Project

runner = CliRunner()
TASK = "color-vqa"


@pytest.fixture
def private(micro_bench, tmp_path):
    """A workspace over a private copy of the micro data, so a test may damage it."""
    data = tmp_path / "data"
    shutil.copytree(micro_bench / "data", data)
    create_workspace(tmp_path / "ws", model=micro_bench / "base-model", data=data)
    return Project.open(tmp_path / "ws")


def _files(project) -> list:
    """Every file in the workspace but the empty per-task lock files (bookkeeping, not artifacts)."""
    return sorted(p.relative_to(project.root) for p in project.root.rglob("*") if p.is_file() and p.name != LOCK)


def fails(project, *args, match: str) -> str:
    before = _files(project)
    result = runner.invoke(app, [*args, "--workspace", str(project.root)])
    after = _files(project)
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


def _train_file(tmp_path):
    return tmp_path / "data" / TASK / "train.jsonl"


def _first_image(tmp_path):
    record = json.loads(_train_file(tmp_path).read_text().splitlines()[0])
    return tmp_path / "data" / record["image"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no pixel data: it must be refused unread)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _committed_embed(project):
    assert runner.invoke(app, ["embed", "--task", TASK, "--workspace", str(project.root)]).exit_code == 0
    return project.store.latest("embed", TASK)


def _still_latest_and_intact(project, good) -> None:
    assert project.store.latest("embed", TASK).number == good.number
    good.verify()


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


def test_truncated_jsonl_keeps_the_previous_version(private, tmp_path):
    good = _committed_embed(private)
    train = _train_file(tmp_path)
    text = train.read_text()
    train.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # the last line cut in half
    fails(private, "embed", "--task", TASK, "--force", match=f"{train}:")
    _still_latest_and_intact(private, good)


def test_non_utf8_jsonl(private, tmp_path):
    train = _train_file(tmp_path)
    train.write_bytes(train.read_bytes() + b'{"image": "\xff\xfe"}\n')
    fails(private, "embed", "--task", TASK, match="UTF-8")


def test_wrong_field_type(private, tmp_path):
    train = _train_file(tmp_path)
    record = json.loads(train.read_text().splitlines()[0])
    record["conversations"] = "not a list"
    _rewrite_line(train, 0, json.dumps(record))
    fails(private, "embed", "--task", TASK, match=f"{train}:1: field 'conversations'")


def test_absurdly_long_jsonl_line(private, tmp_path):
    train = _train_file(tmp_path)
    record = json.loads(train.read_text().splitlines()[0])
    record["padding"] = "x" * (9 * 1024 * 1024)
    _rewrite_line(train, 0, json.dumps(record))
    fails(private, "embed", "--task", TASK, match="line is longer than")


@pytest.mark.parametrize(
    "side, message",
    [(9_000, "9000x9000, above the 64,000,000-pixel limit"), (40_000, "above the 64,000,000-pixel limit (Image size")],
)
def test_image_over_the_pixel_limit(private, tmp_path, side, message):
    good = _committed_embed(private)
    _first_image(tmp_path).write_bytes(_png_header(side, side))
    fails(private, "embed", "--task", TASK, "--force", match=message)
    _still_latest_and_intact(private, good)


def test_file_that_is_not_an_image(private, tmp_path):
    _first_image(tmp_path).write_bytes(b"this is text, not a picture")
    fails(private, "embed", "--task", TASK, match="not a readable image")


def test_absolute_image_path(private, tmp_path):
    train = _train_file(tmp_path)
    record = json.loads(train.read_text().splitlines()[0])
    record["image"] = str(_first_image(tmp_path))
    _rewrite_line(train, 0, json.dumps(record))
    fails(private, "embed", "--task", TASK, match="is absolute")


def test_symlink_out_of_the_data_root(private, tmp_path):
    outside = tmp_path / "elsewhere.png"
    shutil.copy(_first_image(tmp_path), outside)
    image = _first_image(tmp_path)
    image.unlink()
    image.symlink_to(outside)
    fails(private, "embed", "--task", TASK, match="escapes the data root")


def test_zero_batch_size(private):
    result = runner.invoke(app, ["embed", "--task", TASK, "--batch-size", "0", "--workspace", str(private.root)])
    assert result.exit_code == 2 and "batch" in result.output.lower()
    assert private.store.latest("embed", TASK) is None


def test_writer_killed_mid_write_leaves_the_previous_version(private):
    """SIGKILL while a version's files are being written: the last version and LATEST stay valid, the lock
    is released with the process, and the next run commits normally."""
    good = _committed_embed(private)
    script = (
        f"from dmole.artifacts import Workspace\n"
        f"with Workspace({str(private.root)!r}).writer('embed', {TASK!r}, config={{}}, inputs=[], "
        f"environment={{}}, toolkit_version='test') as w:\n"
        f"    with open(w.path('train.parquet'), 'wb') as f:\n"
        f"        f.write(b'half a file'); f.flush(); print('writing', flush=True)\n"
        f"        import time; time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    _still_latest_and_intact(private, good)
    result = runner.invoke(app, ["embed", "--task", TASK, "--force", "--workspace", str(private.root)])
    assert result.exit_code == 0, result.output
    assert private.store.latest("embed", TASK).number == good.number + 1
    assert not list(good.path.parent.glob(".tmp-*")), "the dead writer's temp folder is cleaned up"


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
    fails(private, "tasks", match="learning_rate: unknown key; the known ones are ")


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
    result = runner.invoke(
        app, ["init", "--model", str(model), "--data", str(micro_bench / "data"), "--workspace", str(tmp_path / "ws")]
    )
    assert result.exit_code == 2 and "model_type 'bert' is not supported; supported families" in result.output
    assert not (tmp_path / "ws").exists()
