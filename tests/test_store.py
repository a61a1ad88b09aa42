"""Tests for the storage layer: versions, manifests, crash safety, staleness, locks, I/O."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dmole.artifacts import (
    ArtifactError,
    InputRef,
    InvalidName,
    LockedError,
    MissingArtifact,
    TamperedArtifact,
    Workspace,
    config_hash,
)
from dmole.artifacts.io import (
    fixed_size_float_list,
    read_json,
    read_parquet,
    table_metadata,
    table_to_numpy,
    write_json,
    write_parquet,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {"python": "3.x", "seed": 0}


def commit(ws, stage, task, files, config=None, inputs=(), meta=None):
    """Write one version holding `files` (name -> bytes) and return it."""
    with ws.writer(
        stage, task, config=config or {"k": 1}, inputs=list(inputs), environment=ENV, toolkit_version="0.1.0"
    ) as w:
        for name, data in files.items():
            w.path(name).write_bytes(data)
        w.meta.update(meta or {})
    return w.version


def test_commit_v1_then_v2_moves_latest_and_records_manifest(tmp_path):
    ws = Workspace(tmp_path)
    up = commit(ws, "synth", "caption", {"d.jsonl": b"{}"})
    v1 = commit(ws, "embed", "caption", {"a.bin": b"one"})
    assert (v1.number, (tmp_path / "embed/caption/LATEST").read_text().strip()) == (1, "1")

    data = b"two" * 1000
    v2 = commit(
        ws,
        "embed",
        "caption",
        {"a.bin": data, "adapter/w.safetensors": b"w"},
        config={"dim": 8},
        inputs=[up.ref()],
        meta={"rows": 3},
    )
    assert v2.number == 2 and v2.path == tmp_path / "embed/caption/v2"
    assert ws.latest("embed", "caption") == v2
    assert [v.number for v in ws.versions("embed", "caption")] == [1, 2]
    assert ws.version("embed", "caption", 1) == v1

    m = json.loads((v2.path / "manifest.json").read_text())
    assert m == v2.manifest
    assert m["schema_version"] == 1 and (m["stage"], m["task"], m["version"]) == ("embed", "caption", 2)
    assert m["toolkit_version"] == "0.1.0" and m["environment"] == ENV and m["summary"] == {"rows": 3}
    assert m["config"] == {"dim": 8} and m["config_hash"] == config_hash({"dim": 8})
    assert m["config_hash"] == hashlib.sha256(b'{"dim":8}').hexdigest()
    assert m["inputs"] == [{"stage": "synth", "task": "caption", "version": 1, "content_hash": up.content_hash}]
    assert m["created"].endswith("Z") and v2.created == m["created"]
    sha = {"a.bin": hashlib.sha256(data).hexdigest(), "adapter/w.safetensors": hashlib.sha256(b"w").hexdigest()}
    assert m["outputs"] == [
        {"path": "a.bin", "sha256": sha["a.bin"], "bytes": len(data)},
        {"path": "adapter/w.safetensors", "sha256": sha["adapter/w.safetensors"], "bytes": 1},
    ]
    lines = "".join(f"{p}:{s}\n" for p, s in sorted(sha.items()))
    assert m["content_hash"] == hashlib.sha256(lines.encode()).hexdigest() == v2.content_hash
    assert v2.size_bytes == len(data) + 1
    assert v2.file("adapter/w.safetensors").read_bytes() == b"w"
    v2.verify()
    assert ws.status(v2) == "ok"
    assert not list((tmp_path / "embed/caption").glob(".tmp-*"))


def test_exception_in_writer_commits_nothing(tmp_path):
    ws = Workspace(tmp_path)
    v1 = commit(ws, "embed", "caption", {"a.bin": b"one"})
    with (
        pytest.raises(RuntimeError, match="boom"),
        ws.writer("embed", "caption", config={}, inputs=[], environment={}, toolkit_version="0") as w,
    ):
        w.path("a.bin").write_bytes(b"half")
        raise RuntimeError("boom")
    task_dir = tmp_path / "embed/caption"
    assert sorted(p.name for p in task_dir.iterdir()) == [".lock", "LATEST", "v1"]
    assert ws.latest("embed", "caption") == v1


def test_crash_leftovers_are_ignored_and_latest_falls_back(tmp_path):
    ws = Workspace(tmp_path)
    v1 = commit(ws, "embed", "caption", {"a.bin": b"one"})
    task_dir = tmp_path / "embed/caption"
    (task_dir / ".tmp-dead").mkdir()
    (task_dir / ".tmp-dead/a.bin").write_bytes(b"partial")
    (task_dir / "v2").mkdir()  # renamed but no manifest: cannot happen via the writer, still not a version
    (task_dir / "v2/a.bin").write_bytes(b"x")
    (task_dir / "v3").mkdir()
    (task_dir / "v3/manifest.json").write_text("{not json")
    assert ws.versions("embed", "caption") == [v1]
    assert ws.latest("embed", "caption") == v1
    assert ws.all_latest() == [v1]

    (task_dir / "LATEST").write_text("7\n")
    assert ws.latest("embed", "caption") == v1
    (task_dir / "LATEST").unlink()
    assert ws.latest("embed", "caption") == v1

    v4 = commit(ws, "embed", "caption", {"a.bin": b"four"})
    assert v4.number == 4 and ws.latest("embed", "caption") == v4
    assert not (task_dir / ".tmp-dead").exists()


def test_missing_artifacts(tmp_path):
    ws = Workspace(tmp_path / "nowhere")
    assert ws.latest("embed", "caption") is None and ws.all_latest() == []
    with pytest.raises(
        MissingArtifact, match=r"^no 'embed' artifact for task 'caption' \(run `dmole embed --task caption` first\)$"
    ):
        ws.require("embed", "caption", hint="dmole embed --task caption")
    with pytest.raises(MissingArtifact):
        ws.version("embed", "caption", 1)
    v = commit(ws, "embed", "caption", {"a.bin": b"one"})
    with pytest.raises(MissingArtifact, match=re.escape("no output 'b.bin'")):
        v.file("b.bin")


def test_all_latest_sorted(tmp_path):
    ws = Workspace(tmp_path)
    commit(ws, "zc-score", "vqa", {"s": b"1"})
    commit(ws, "embed", "vqa", {"e": b"1"})
    commit(ws, "embed", "caption", {"e": b"1"})
    commit(ws, "embed", "caption", {"e": b"2"})
    ws.write_config({"tasks": ["caption"]})
    assert [str(v) for v in ws.all_latest()] == ["embed/caption v2", "embed/vqa v1", "zc-score/vqa v1"]


def test_find_current(tmp_path):
    ws = Workspace(tmp_path)
    a = commit(ws, "embed", "caption", {"e": b"1"})
    cfg = {"lr": 0.1, "layers": [1, 2]}
    b = commit(ws, "fit-router", "caption", {"r": b"1"}, config=cfg, inputs=[a.ref()])
    assert ws.find_current("fit-router", "caption", config_hash(dict(reversed(cfg.items()))), [a.ref()]) == b
    assert ws.find_current("fit-router", "caption", config_hash({**cfg, "lr": 0.2}), [a.ref()]) is None
    other = InputRef("embed", "caption", 1, "0" * 64)
    assert ws.find_current("fit-router", "caption", config_hash(cfg), [other]) is None
    assert ws.find_current("fit-router", "caption", config_hash(cfg), []) is None
    assert ws.find_current("fit-router", "vqa", config_hash(cfg), [a.ref()]) is None


def test_staleness_follows_input_content(tmp_path):
    ws = Workspace(tmp_path)
    a1 = commit(ws, "embed", "caption", {"e": b"1"})
    b = commit(ws, "fit-router", "caption", {"r": b"1"}, inputs=[a1.ref()])
    assert ws.status(b) == "ok" and ws.stale_inputs(b) == []

    a2 = commit(ws, "embed", "caption", {"e": b"1"})  # re-run, identical content
    assert a2.number == 2 and ws.status(b) == "ok"
    assert ws.find_current("fit-router", "caption", config_hash({"k": 1}), [a2.ref()]) == b

    commit(ws, "embed", "caption", {"e": b"changed"})
    assert ws.status(b) == "stale"
    assert ws.stale_inputs(b) == ["input embed/caption changed: built from v1, latest is v3"]


def test_input_gone_is_stale(tmp_path):
    ws = Workspace(tmp_path)
    b = commit(ws, "fit-router", "caption", {"r": b"1"}, inputs=[InputRef("embed", "caption", 1, "0" * 64)])
    assert ws.status(b) == "stale"
    assert ws.stale_inputs(b) == ["input embed/caption v1 is gone"]


def test_tampered_output(tmp_path):
    ws = Workspace(tmp_path)
    v = commit(ws, "train-task", "caption", {"adapter/adapter_model.safetensors": b"\x00" * 64})
    target = v.path / "adapter/adapter_model.safetensors"
    target.write_bytes(b"\x00" * 63 + b"\x01")  # same size, one byte changed
    with pytest.raises(TamperedArtifact, match=str(target)):
        v.file("adapter/adapter_model.safetensors")
    assert v.file("adapter/adapter_model.safetensors", verify=False) == target
    with pytest.raises(TamperedArtifact):
        v.verify()
    assert ws.status(v) == "tampered"
    target.unlink()
    assert ws.status(v) == "tampered"


def test_lock_held_by_another_process(tmp_path):
    ws = Workspace(tmp_path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dmole.artifacts import Workspace\n"
            f"with Workspace({str(tmp_path)!r}).lock('embed', 'caption'):\n"
            "    print('locked', flush=True); sys.stdin.read()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with (
            pytest.raises(LockedError, match=rf"embed/caption is being written by another process \(pid {child.pid}\)"),
            ws.lock("embed", "caption"),
        ):
            pass
        with pytest.raises(LockedError):
            commit(ws, "embed", "caption", {"a": b"1"})
        with ws.lock("embed", "vqa"):  # another task is independent
            pass
    finally:
        child.communicate("")
    assert child.returncode == 0
    assert commit(ws, "embed", "caption", {"a": b"1"}).number == 1
    assert not list((tmp_path / "embed/caption").glob(".tmp-*"))


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    ws = Workspace(tmp_path)
    with ws.lock("embed", "caption"), pytest.raises(LockedError), ws.lock("embed", "caption"):
        pass
    with ws.lock("embed", "caption"):
        pass


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "..", "a b", "tâche", "x\n"])
def test_invalid_names_rejected(tmp_path, name):
    ws = Workspace(tmp_path)
    with pytest.raises(InvalidName):
        ws.latest(name, "caption")
    with pytest.raises(InvalidName):
        ws.writer("embed", name, config={}, inputs=[], environment={}, toolkit_version="0")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["manifest.json", "../x", "/abs", ""])
def test_writer_rejects_bad_output_names(tmp_path, name):
    ws = Workspace(tmp_path)
    with (
        pytest.raises(ArtifactError, match="invalid output name"),
        ws.writer("embed", "caption", config={}, inputs=[], environment={}, toolkit_version="0") as w,
    ):
        w.path(name)
    assert ws.latest("embed", "caption") is None


def test_write_config_writes_workspace_json_alone(tmp_path):
    Workspace(tmp_path).write_config({"model": "tiny", "tasks": ["a", "b"]})
    assert read_json(tmp_path / "workspace.json") == {"model": "tiny", "tasks": ["a", "b"]}
    assert [p.name for p in tmp_path.iterdir()] == ["workspace.json"]


def test_json_helpers(tmp_path):
    path = tmp_path / "sub/x.json"
    write_json(path, {"b": 1, "a": "é"})
    assert list(read_json(path)) == ["b", "a"] and read_json(path)["a"] == "é"
    path.write_text('{"b": ')
    with pytest.raises(ArtifactError, match=f"cannot read {path}"):
        read_json(path)
    with pytest.raises(ArtifactError, match=re.escape("missing.json: file not found")):
        read_json(tmp_path / "missing.json")
    with pytest.raises(ArtifactError, match=re.escape("missing.parquet: file not found")):
        read_parquet(tmp_path / "missing.parquet")


def test_parquet_round_trip(tmp_path):
    emb = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    path = tmp_path / "emb.parquet"
    write_parquet(
        path,
        {"id": ["a", "b", "c", "d", "e"], "emb": fixed_size_float_list(emb)},
        metadata={"model": "tiny", "dim": "3"},
    )
    table = read_parquet(path)
    assert table.column("id").to_pylist() == ["a", "b", "c", "d", "e"]
    assert table.schema.field("emb").type == pa.list_(pa.float32(), 3)
    out = table_to_numpy(table, "emb")
    assert out.dtype == np.float32 and out.shape == (5, 3)
    np.testing.assert_array_equal(out, emb)
    np.testing.assert_array_equal(table_to_numpy(table.slice(2, 2), "emb"), emb[2:4])
    assert table_metadata(table) == {"model": "tiny", "dim": "3"}
    assert [p.name for p in tmp_path.iterdir()] == ["emb.parquet"]
    with pytest.raises(ArtifactError, match="not a fixed-size list"):
        table_to_numpy(table, "id")
    with pytest.raises(ArtifactError, match="no column"):
        table_to_numpy(table, "nope")


def test_corrupt_parquet_is_an_artifact_error(tmp_path):
    path = tmp_path / "emb.parquet"
    write_parquet(path, {"emb": fixed_size_float_list(np.ones((4, 2)))})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ArtifactError, match=f"cannot read {path}"):
        read_parquet(path)


def test_import_is_light():
    code = (
        "import sys, dmole.artifacts, dmole.artifacts.io; "
        "print(sorted(m for m in ('torch', 'transformers', 'pyarrow', 'numpy', 'dmole.stages', 'dmole.cli') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _set(path, value):
    """An edit of a manifest: ``path`` of keys and indices set to ``value``."""

    def edit(m):
        *parents, last = path
        for key in parents:
            m = m[key]
        m[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_set(("outputs", 0, "bytes"), "3"), "outputs[0].bytes is not an int"),
        (_set(("outputs", 0, "bytes"), True), "outputs[0].bytes is not an int"),
        (_set(("outputs",), {"a.bin": 3}), "outputs is not a list"),
        (_set(("outputs", 0, "path"), "../../workspace.json"), "is not a file of the version folder"),
        (_set(("outputs", 0, "path"), "/etc/hostname"), "is not a file of the version folder"),
        (_set(("inputs",), [{"stage": "embed"}]), "inputs[0].task is missing"),
        (_set(("created",), 20260101), "created is not a str"),
        (_set(("summary",), None), "summary is not a dict"),
        (_set(("version",), 1), "it names schema 1, embed/caption v1"),
        (lambda m: m.pop("config_hash"), "no field 'config_hash'"),
    ],
)
def test_a_hand_edited_manifest_is_tampered_and_no_version(tmp_path, edit, problem):
    ws = Workspace(tmp_path)
    v1 = commit(ws, "embed", "caption", {"a.bin": b"one"})
    v2 = commit(ws, "embed", "caption", {"a.bin": b"two"})
    manifest = json.loads((v2.path / "manifest.json").read_text())
    edit(manifest)
    (v2.path / "manifest.json").write_text(json.dumps(manifest))
    assert ws.latest("embed", "caption") == v1 and ws.all_latest() == [v1]  # no stage reads it
    [(number, path, found)] = ws.tampered("embed", "caption")
    assert (number, path) == (2, v2.path) and found.startswith("manifest.json: ") and problem in found
    with pytest.raises(TamperedArtifact, match="embed/caption v2 was modified after it was written"):
        ws.version("embed", "caption", 2)


def test_an_unreadable_manifest_is_tampered_and_a_missing_one_is_no_version(tmp_path):
    ws = Workspace(tmp_path)
    commit(ws, "embed", "caption", {"a.bin": b"one"})
    (tmp_path / "embed/caption/v2").mkdir()
    (tmp_path / "embed/caption/v3").mkdir()
    (tmp_path / "embed/caption/v3/manifest.json").write_bytes(b"\xff{")
    assert ws.tampered("embed", "caption") == [(3, tmp_path / "embed/caption/v3", "manifest.json is not readable JSON")]
