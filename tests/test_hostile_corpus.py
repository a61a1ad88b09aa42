"""A hostile-input corpus, tried as a new user would: `dmole import`, `dmole convert`, the presets (`init
--profile` / `--benchmark`, `synth`, `demo`, a workspace's `stages` section) and the options of every stage, each
given something broken, absurd or of the wrong kind.

One check for every case: a non-zero exit status, exactly one line of output (no usage box, no traceback) that
says what is wrong, and nothing written or destroyed: every file under the test's folder (the workspace, the data
root, the datasets, the checkpoints) is byte for byte what it was. Add a case where a new one turns up.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from datasets import DatasetDict
from PIL import Image
from typer.testing import CliRunner

from dmole.artifacts.layout import LOCK
from dmole.cli.app import app
from dmole.stages.init import create_workspace
from test_import import BLUE, RED, dataset

runner = CliRunner()
ROWS = {"image": [RED, BLUE], "question": ["What colour?", "And this?"], "answer": ["red", "blue"]}


@dataclass
class Env:
    """The test's folder: a workspace ``ws`` over a private copy of the micro benchmark's data ``data``, its model
    ``model``, and room for datasets and checkpoints."""

    root: Path
    ws: Path
    data: Path
    model: Path

    def saved(self, name: str = "hub", train: dict | None = None, test: dict | None = None) -> str:
        """A save_to_disk DatasetDict (train and test splits of ``ROWS`` unless given)."""
        folder = self.root / name
        DatasetDict(train=dataset(dict(train or ROWS)), test=dataset(dict(test or ROWS))).save_to_disk(str(folder))
        return str(folder)

    def parquet(self) -> str:
        """A folder of parquet shards, as the hub stores them."""
        shards = self.root / "shards" / "data"
        shards.mkdir(parents=True)
        for split in ("train", "test"):
            dataset(dict(ROWS)).to_parquet(str(shards / f"{split}-00000-of-00001.parquet"))
        return str(shards.parent)

    def checkpoint(self, config: object) -> str:
        """A remote-code checkpoint folder holding only ``config`` as its config.json (errors come before weights)."""
        folder = self.root / "remote"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
        return str(folder)

    def import_(self, source: str, *args: str) -> list[str]:
        return ["import", source, "--data", str(self.data), "--task", "imported", "--family", "short", *args]

    def stage(self, *args: str) -> list[str]:
        return [*args, "--workspace", str(self.ws)]

    def init(self, *args: str) -> list[str]:
        return [
            "init",
            "--model",
            str(self.model),
            "--data",
            str(self.data),
            "--workspace",
            str(self.root / "new"),
            *args,
        ]


def _bomb() -> bytes:
    """A 20000 x 20000 PNG of a few hundred kB: 400 million pixels once decoded."""
    buffer = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _edited_workspace(env: Env, **changes) -> list[str]:
    """`dmole tasks` over the workspace with ``changes`` made to its workspace.json by hand."""
    path = env.ws / "workspace.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))  # json writes inf as Infinity
    return env.stage("tasks")


def _config_not_json(env: Env) -> list[str]:
    source = Path(env.checkpoint({}))
    (source / "config.json").write_text("{model_type")
    return ["convert", str(source), str(env.root / "out")]


def _truncated_parquet(env: Env) -> list[str]:
    source = env.parquet()
    shard = Path(source) / "data" / "train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])
    return env.import_(source)


def _without_arrow(env: Env) -> list[str]:
    source = env.saved()
    for arrow in (Path(source) / "train").glob("*.arrow"):
        arrow.unlink()
    return env.import_(source)


def _broken_dataset_dict(env: Env) -> list[str]:
    source = env.saved()
    (Path(source) / "dataset_dict.json").write_text('{"splits": ["train", "test"')
    return env.import_(source)


def _one_saved_dataset(env: Env) -> list[str]:
    dataset(dict(ROWS)).save_to_disk(str(env.root / "one"))
    return env.import_(str(env.root / "one"))


def _overwrite_over_an_unreadable_registry(env: Env) -> list[str]:
    (env.data / "tasks.json").write_text('{"tasks": [')  # the old task folders must stay as they are
    return env.import_(env.saved(), "--task", "color-vqa", "--overwrite")


def _task_name_that_is_a_file(env: Env) -> list[str]:
    (env.data / "notes").write_text("not a task")
    return env.import_(env.saved(), "--task", "notes", "--overwrite")


@dataclass(frozen=True)
class Case:
    name: str
    command: Callable[[Env], list[str]]  # prepares what it needs under the test's folder, returns the arguments
    says: str  # what the one line must contain


CASES = [
    # ---- dmole import: damaged datasets ----
    Case(
        "import: an empty training split",
        lambda e: e.import_(e.saved(train={k: [] for k in ROWS})),
        "the train split 'train' has no rows",
    ),
    Case(
        "import: an empty evaluation split",
        lambda e: e.import_(e.saved(test={k: [] for k in ROWS})),
        "the eval split 'test' has no rows",
    ),
    Case("import: a broken dataset_dict.json", _broken_dataset_dict, "dataset_dict.json:1: not valid JSON"),
    Case("import: a missing .arrow file", _without_arrow, "train: is not a readable dataset (FileNotFoundError"),
    Case("import: a truncated parquet shard", _truncated_parquet, "is not a readable dataset (ArrowInvalid"),
    Case("import: one saved Dataset, not a DatasetDict", _one_saved_dataset, "holds one saved Dataset"),
    Case("import: a folder that is no dataset", lambda e: e.import_(str(e.data)), "is neither a save_to_disk folder"),
    Case("import: a source that does not exist", lambda e: e.import_(str(e.root / "nowhere")), "does not exist"),
    Case(
        "import: a number column mapped to image",
        lambda e: e.import_(e.saved(train={**ROWS, "n": [1, 2]}, test={**ROWS, "n": [1, 2]}), "--map", "image=n"),
        "column 'n' does not hold images",
    ),
    Case(
        "import: a text column mapped to image",
        lambda e: e.import_(e.saved(), "--map", "image=question"),
        "field 'test[0].question': no image",
    ),
    Case(
        "import: bytes that are not an image",
        lambda e: e.import_(e.saved(train={**ROWS, "image": [b"GIF89a-not-really", RED]})),
        "field 'train[0].image': not a readable image",
    ),
    Case(
        "import: a decompression bomb",
        lambda e: e.import_(e.saved(train={**ROWS, "image": [_bomb(), RED]})),
        "field 'train[0].image': image is above the 64,000,000-pixel limit",
    ),
    # ---- dmole import: bad arguments and a bad data root ----
    Case("import: a task name that is a file", _task_name_that_is_a_file, "is a file, not a task folder"),
    Case(
        "import --overwrite over an unreadable registry",
        _overwrite_over_an_unreadable_registry,
        "tasks.json:1: not valid JSON",
    ),
    Case(
        "import: a task that exists, without --overwrite",
        lambda e: e.import_(e.saved(), "--task", "color-vqa"),
        "already exists; pass --overwrite",
    ),
    Case(
        "import: a task name that climbs out",
        lambda e: e.import_(e.saved(), "--task", "../escape"),
        "task name '../escape' must be letters",
    ),
    Case("import: an unknown family", lambda e: e.import_(e.saved(), "--family", "poem"), "family: Input should be"),
    Case("import: an unknown box format", lambda e: e.import_(e.saved(), "--bbox", "cxcywh"), "cxcywh"),
    Case(
        "import: a data root that does not exist",
        lambda e: e.import_(e.saved(), "--data", str(e.root / "nowhere")),
        "does not exist",
    ),
    Case(
        "import: the same split for training and evaluation",
        lambda e: e.import_(e.saved(), "--eval-split", "train"),
        "the training and evaluation splits are both 'train'",
    ),
    Case("import: --map without '='", lambda e: e.import_(e.saved(), "--map", "question"), "--map takes FIELD=COLUMN"),
    Case(
        "import: --map of an unknown field",
        lambda e: e.import_(e.saved(), "--map", "colour=question"),
        "--map colour=...: a short record has the fields",
    ),
    Case("import: without SOURCE", lambda e: ["import", "--data", str(e.data)], "Missing argument 'SOURCE'"),
    # ---- dmole convert ----
    Case(
        "convert: a config that is not an object",
        lambda e: ["convert", e.checkpoint([1, 2]), str(e.root / "out")],
        "config.json: expected a JSON object, not list",
    ),
    Case(
        "convert: an llm_config without vocab_size",
        lambda e: [
            "convert",
            e.checkpoint({"model_type": "internvl_chat", "vision_config": {}, "llm_config": {}}),
            str(e.root / "out"),
        ],
        "llm_config.vocab_size must be a positive integer, not None",
    ),
    Case(
        "convert: a vocab_size that is text",
        lambda e: [
            "convert",
            e.checkpoint({"model_type": "internvl_chat", "vision_config": {}, "llm_config": {"vocab_size": "92553"}}),
            str(e.root / "out"),
        ],
        "llm_config.vocab_size must be a positive integer, not '92553'",
    ),
    Case(
        "convert: OUT under a regular file",
        lambda e: [
            "convert",
            e.checkpoint({"model_type": "internvl_chat", "vision_config": {}, "llm_config": {"vocab_size": 8}}),
            str(e.ws / "workspace.json" / "out"),
        ],
        "is a file, not a folder",
    ),
    Case("convert: a config.json that is not JSON", _config_not_json, "config.json is not valid JSON"),
    Case(
        "convert: --max-tiles 0",
        lambda e: ["convert", e.checkpoint({}), str(e.root / "out"), "--max-tiles", "0"],
        "Invalid value for '--max-tiles'",
    ),
    Case(
        "convert: a SRC that does not exist",
        lambda e: ["convert", str(e.root / "nowhere"), str(e.root / "out")],
        "is not a folder",
    ),
    # ---- the presets ----
    Case(
        "init: an unknown profile",
        lambda e: e.init("--profile", "fast"),
        "Invalid value for '--profile': 'fast' is not one of 'dmole', 'reference'",
    ),
    Case("init: an unknown benchmark preset", lambda e: e.init("--benchmark", "coin"), "coin"),
    Case(
        "init: an unknown image aspect ratio",
        lambda e: e.init("--image-aspect-ratio", "crop"),
        "Invalid value for '--image-aspect-ratio': 'crop' is not one of 'processor', 'pad'",
    ),
    Case("init: a negative seed", lambda e: e.init("--seed", "-1"), "seed: Input should be greater than or equal"),
    Case(
        "init: --data names a file",
        lambda e: ["init", "--model", str(e.model), "--data", str(e.data / "tasks.json"), "-w", str(e.root / "new")],
        "/tasks.json is a file, not a folder",
    ),
    Case(
        "init: --workspace names a file",
        lambda e: ["init", "--model", str(e.model), "--data", str(e.data), "-w", str(e.data / "tasks.json")],
        "/tasks.json cannot be created: ",
    ),
    Case(
        "init: --workspace under a file",
        lambda e: ["init", "--model", str(e.model), "--data", str(e.data), "-w", str(e.data / "tasks.json" / "ws")],
        "/tasks.json/ws cannot be created: ",
    ),
    Case(
        "import: --data names a file",
        lambda e: ["import", e.saved(), "--data", str(e.data / "tasks.json"), "--task", "t", "--family", "short"],
        "/tasks.json is a file, not a folder",
    ),
    Case(
        "synth --seed -1",
        lambda e: ["synth", "--out", str(e.root / "synth"), "--seed", "-1"],
        "Invalid value for '--seed': Input should be greater than or equal to 0",
    ),
    Case(
        "demo --out a benchmark of another recipe, whose workspace it would delete",
        lambda e: ["demo", "--out", str(e.model.parent), "--family", "qwen2vl"],
        "holds the synthetic benchmark of another recipe (family 'llava' -> 'qwen2vl', sizes",
    ),
    Case(
        "synth --out under a regular file",
        lambda e: ["synth", "--out", str(e.ws / "workspace.json" / "synth")],
        "workspace.json is a file, not a folder",
    ),
    Case(
        "demo --seed 2^32",
        lambda e: ["demo", "--out", str(e.root / "demo"), "--seed", str(2**32)],
        "Input should be less than or equal to 4294967295",
    ),
    Case(
        "demo --methods of no method",
        lambda e: ["demo", "--out", str(e.root / "demo"), "--methods", "best"],
        "unknown method 'best'",
    ),
    Case(
        "workspace: an infinite stage default",
        lambda e: _edited_workspace(e, stages={"train-task": {"lr": 1e999}}),
        "stage 'train-task': lr: Input should be a finite number",
    ),
    Case("workspace: a seed of 2^64", lambda e: _edited_workspace(e, seed=2**64), "seed: Input should be less"),
    # ---- every stage's options ----
    Case(
        "train-task --epochs inf",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--epochs", "inf"),
        "epochs: Input should be a finite number",
    ),
    Case(
        "train-task --epochs nan",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--epochs", "nan"),
        "epochs: Input should be a finite number",
    ),
    Case(
        "train-task --lr inf",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--lr", "inf"),
        "lr: Input should be a finite number",
    ),
    Case(
        "train-task --lr -1",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--lr", "-1"),
        "lr: Input should be greater than 0",
    ),
    Case(
        "train-task --warmup-ratio 1",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--warmup-ratio", "1"),
        "warmup_ratio: Input should be less than 1",
    ),
    Case(
        "train-task --clip nan",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--clip", "nan"),
        "clip: Input should be a finite number",
    ),
    Case(
        "train-task --seed 2^64",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--seed", str(2**64)),
        "seed: Input should be less",
    ),
    Case(
        "train-task --max-length 0",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--max-length", "0"),
        "max_length: Input should be greater than 0",
    ),
    Case(
        "train-task --precision fp16",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--precision", "fp16"),
        "Invalid value for '--precision': 'fp16' is not one of 'auto', 'fp32', 'bf16'",
    ),
    Case(
        "train-task --hparam without '='",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--hparam", "x"),
        "expected KEY=VALUE",
    ),
    Case(
        "train-task --hparam inf",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--method", "lwf-lora", "--hparam", "temperature=Infinity"),
        "finite number",
    ),
    Case(
        "train-task --input-workers -1",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--input-workers", "-1"),
        "input_workers: Input should be",
    ),
    Case(
        "train-task --method nothing",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--method", "nothing"),
        "unknown method 'nothing'",
    ),
    Case(
        "train-task: an unknown option",
        lambda e: e.stage("train-task", "-t", "color-vqa", "--learning-rate", "1"),
        "No such option: --learning-rate",
    ),
    Case("train-task: no --task", lambda e: e.stage("train-task"), "Missing option '--task'"),
    Case(
        "eval --threshold-scales nan",
        lambda e: e.stage("eval", "--after", "color-vqa", "--threshold-scales", "nan"),
        "--threshold-scales: threshold_scale: Input should be a finite number",
    ),
    Case(
        "eval --threshold-scales 1,inf",
        lambda e: e.stage("eval", "--after", "color-vqa", "--threshold-scales", "1,inf"),
        "finite number",
    ),
    Case(
        "eval --threshold-scales -1",
        lambda e: e.stage("eval", "--after", "color-vqa", "--threshold-scales", "-1"),
        "threshold_scale: Input should be greater than 0",
    ),
    Case(
        "eval --threshold-scale 0",
        lambda e: e.stage("eval", "--after", "color-vqa", "--threshold-scale", "0"),
        "threshold_scale: Input should be greater than 0",
    ),
    Case(
        "eval --second-expert junk",
        lambda e: e.stage("eval", "--after", "color-vqa", "--second-expert", "junk"),
        "'--second-expert': 'junk' is not one of 'partner', 'any', 'margin', 'weighted'",
    ),
    Case(
        "eval --vote-support 2",
        lambda e: e.stage("eval", "--after", "color-vqa", "--vote-support", "2"),
        "vote_support: Input should be less than or equal to 1",
    ),
    Case(
        "embed --batch-size 0",
        lambda e: e.stage("embed", "-t", "color-vqa", "--batch-size", "0"),
        "batch_size: Input should be greater than 0",
    ),
    Case(
        "embed --batch-size abc",
        lambda e: e.stage("embed", "-t", "color-vqa", "--batch-size", "abc"),
        "Invalid value for '--batch-size'",
    ),
    Case(
        "fit-router --quantile 1",
        lambda e: e.stage("fit-router", "-t", "color-vqa", "--quantile", "1"),
        "quantile: Input should be less than 1",
    ),
    Case("fit-router --lr nan", lambda e: e.stage("fit-router", "-t", "color-vqa", "--lr", "nan"), "finite number"),
    Case(
        "zc-score --portion 2",
        lambda e: e.stage("zc-score", "-t", "color-vqa", "--portion", "2"),
        "portion: Input should be less than or equal to 1",
    ),
    Case(
        "allocate --budget nan",
        lambda e: e.stage("allocate", "-t", "color-vqa", "--budget", "nan"),
        "budget 'nan' is neither a fraction",
    ),
    Case(
        "route-train --skip-ratio 1",
        lambda e: e.stage("route-train", "--skip-ratio", "1"),
        "skip_ratio: Input should be less than 1",
    ),
    Case("route-train --roe-lr inf", lambda e: e.stage("route-train", "--roe-lr", "inf"), "finite number"),
    Case(
        "route-train stages out of order",
        lambda e: e.stage("route-train", "--stage1-start", "0.9", "--stage2-start", "0.1"),
        "stage1_start must not exceed stage2_start",
    ),
    Case(
        "eval --roe --batch-size 0",
        lambda e: e.stage("eval", "--roe", "--batch-size", "0"),
        "batch_size: Input should be greater than 0",
    ),
    Case("a task name that reads as a rich closing tag", lambda e: e.stage("embed", "-t", "[/x]"), "task '[/x]'"),
    Case("a task name that reads as a rich style", lambda e: e.stage("embed", "-t", "[red]x"), "task '[red]x'"),
    Case(
        "show: a version that does not exist",
        lambda e: e.stage("show", "embed", "-t", "color-vqa", "--version", "3"),
        "no version 3 of the 'embed' artifact",
    ),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its content's hash (the empty lock files aside: bookkeeping, not data)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


@pytest.fixture
def env(micro_bench, tmp_path) -> Env:
    data = tmp_path / "data"
    shutil.copytree(micro_bench / "data", data)
    create_workspace(
        tmp_path / "ws",
        model=micro_bench / "base-model",
        data=data,
        stages={"train-task": {"epochs": 1, "batch_size": 4, "checkpoint_every": 1}},
    )
    return Env(tmp_path, tmp_path / "ws", data, micro_bench / "base-model")


def refused(env: Env, args: list[str]) -> str:
    """Run ``args``; check it failed with one line and changed nothing under the test's folder; return the line."""
    before = snapshot(env.root)
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code not in (0, None) and isinstance(result.exception, SystemExit), result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert snapshot(env.root) == before, "a refused command must not write or remove anything"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_is_one_line_and_changes_nothing(env, case):
    line = refused(env, case.command(env))
    assert case.says in line, line


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-length", "1"], "nothing was learned: none of the 3 steps had a supervised token"),
        (["--lr", "1e30"], "training diverged at step 2 of 3: the loss is nan"),
    ],
)
def test_a_broken_training_run_fails_and_saves_nothing(env, args, says):
    line = refused(env, env.stage("train-task", "-t", "shape-caption", "--method", "seq-lora", *args))
    assert says in line, line


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["outputs"][0].update(bytes="12"),  # a wrong type, which crashed `dmole ls`
        lambda m: m.update(inputs=None),
        lambda m: m.update(version="2"),
    ],
)
def test_ls_and_show_survive_a_hand_edited_manifest_and_call_it_tampered(env, edit):
    assert runner.invoke(app, env.stage("embed", "-t", "color-vqa")).exit_code == 0
    assert runner.invoke(app, env.stage("embed", "-t", "color-vqa", "--force")).exit_code == 0
    path = env.ws / "embed" / "color-vqa" / "v2" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    listed = runner.invoke(app, env.stage("ls", "--json"))
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["version"], r["status"]) for r in rows] == [(1, "ok"), (2, "tampered")]
    assert rows[1]["problem"].startswith("manifest.json: ")
    shown = runner.invoke(app, env.stage("show", "embed"))
    assert shown.exit_code == 0 and "tampered: embed/color-vqa v2: manifest.json: " in shown.output, shown.output
    line = refused(env, env.stage("show", "embed", "-t", "color-vqa", "--version", "2"))
    assert "embed/color-vqa v2 was modified after it was written (manifest.json: " in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, in which no folder can be made")
@pytest.mark.parametrize(
    "args",
    [
        ["synth", "--out", "/proc/dmole-nowhere/bench"],
        ["demo", "--out", "/proc/dmole-nowhere/bench"],
    ],
    ids=["synth", "demo"],
)
def test_a_folder_the_file_system_refuses_is_one_line_naming_it(env, args):
    """A folder no one can make (a full disk or a denied permission alike) is one line, not a traceback."""
    line = refused(env, args)
    assert line == "error: /proc/dmole-nowhere: No such file or directory", line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, whose writes fail as on a full disk")
def test_a_full_disk_is_one_line():
    """A write names no path, so the error is told by its errno: the line says the disk is full; any other
    pathless OSError is a bug's and keeps its traceback."""
    import typer

    from dmole.cli.common import handles_user_errors

    def write(target: str) -> None:
        with open(target, "w") as file:
            file.write("x")

    full = typer.Typer()
    full.command()(handles_user_errors(lambda: write("/dev/full")))
    result = runner.invoke(full, [])
    assert result.exit_code == 1 and result.output.strip() == "error: No space left on device", result.output

    def unrelated() -> None:
        raise OSError("a bug's own error")

    bug = typer.Typer()
    bug.command()(handles_user_errors(unrelated))
    assert isinstance(runner.invoke(bug, []).exception, OSError)


def test_paths_are_printed_as_they_are_though_they_read_as_rich_markup(env):
    """Paths and names are never read as rich markup: '[red]' stays in the line and '[/x]' does not crash it."""
    ws = env.root / "[red]ws[/x]"
    made = runner.invoke(app, env.init()[:-2] + ["--workspace", str(ws)])
    assert made.exit_code == 0 and f"init: wrote {ws / 'workspace.json'} " in made.output, made.output
    embedded = runner.invoke(app, ["embed", "-t", "color-vqa", "--workspace", str(ws)])
    assert embedded.exit_code == 0 and str(ws / "embed" / "color-vqa" / "v1") in embedded.output, embedded.output
    shown = runner.invoke(app, ["show", "embed", "-t", "color-vqa", "--workspace", str(ws)])
    assert shown.exit_code == 0 and f"path: {ws / 'embed' / 'color-vqa' / 'v1'}" in shown.output, shown.output
