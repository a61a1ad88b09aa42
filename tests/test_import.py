"""`dmole import`: local Hugging Face datasets (parquet shards, a save_to_disk folder) become tasks of a data root,
validated as JSONL files are, and read back by the task loaders exactly as the family's format says."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from PIL import Image
from typer.testing import CliRunner

from dmole.cli.app import app
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.registry import read_registry
from dmole.stages.data.task_swap import complete_imports, import_lock
from dmole.stages.data.tasks import load_eval_samples, load_train_samples


def png(colour: tuple[int, int, int], size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset(columns: dict) -> Dataset:
    """Rows with an image column as the hub stores it (bytes, decoded by `datasets` as an Image feature)."""
    images = [{"bytes": data, "path": None} for data in columns.pop("image")]
    return Dataset.from_dict({"image": images, **columns}).cast_column("image", ImageFeature())


RED, BLUE = png((200, 0, 0)), png((0, 0, 200))
CHOICE_ROWS = {
    "image": [RED, BLUE, RED],
    "query": ["Which colour?", "Which colour?", "Which shade?"],
    "options": [["red", "blue"], ["red", "blue"], ["red", "blue", "green"]],
    "label": ["A", "blue", "red"],
}


def dmole(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root


def test_parquet_shards_become_a_choice_task(tmp_path, data):
    shards = tmp_path / "hub" / "data"
    shards.mkdir(parents=True)
    dataset(dict(CHOICE_ROWS)).to_parquet(str(shards / "train-00000-of-00001.parquet"))
    dataset({k: v[:2] for k, v in CHOICE_ROWS.items()}).to_parquet(str(shards / "test-00000-of-00001.parquet"))
    code, output = dmole(
        "import",
        str(tmp_path / "hub"),
        "--data",
        str(data),
        "--task",
        "colours",
        "--family",
        "choice",
        "--map",
        "question=query",
        "--map",
        "answer=label",
    )
    assert code == 0, output
    assert "3 training and 2 evaluation samples (2 images)" in output  # the repeated image is written once
    [spec] = read_registry(data / "tasks.json")
    assert (spec.name, spec.family, spec.train, spec.eval) == (
        "colours",
        "choice",
        "colours/train.jsonl",
        "colours/test.jsonl",
    )
    test = load_eval_samples(data, spec)
    assert [s.references["answer"] for s in test] == [0, 1]  # a letter and an option's text, as indices
    assert test[0].image.read_bytes() == RED  # the dataset's own bytes, not a re-encoding
    train = load_train_samples(data, spec)
    assert [s.turns[0][1] for s in train] == ["A", "B", "A"]  # the option letter, as the family's training answer
    assert train[2].turns[0][0] == "<image>\n" + render_prompt(spec, load_eval_samples(data, spec)[0]).replace(
        "Which colour?\nA. red\nB. blue", "Which shade?\nA. red\nB. blue\nC. green"
    )


def test_a_save_to_disk_folder_becomes_a_vqa_task(tmp_path, data):
    answers = [
        [{"answer": "red", "answer_id": i} for i in range(6)] + [{"answer": "pink", "answer_id": 9}] * 4,
        [{"answer": "blue", "answer_id": i} for i in range(10)],
    ]
    rows = {
        "image": [RED, BLUE],
        "question": ["What colour?", "And this?"],
        "answers": answers,
        "question_id": [501, 502],
    }
    DatasetDict(train=dataset(dict(rows)), validation=dataset(dict(rows))).save_to_disk(str(tmp_path / "saved"))
    code, output = dmole(
        "import",
        str(tmp_path / "saved"),
        "--data",
        str(data),
        "-t",
        "vqa",
        "--family",
        "vqa10",
        "--prompt",
        "{question} One word.",
    )
    assert code == 0, output
    [spec] = read_registry(data / "tasks.json")
    assert spec.prompt == "{question} One word."
    test = load_eval_samples(data, spec)
    assert [s.id for s in test] == ["501", "502"] and test[0].references["answers"][6] == "pink"
    train = load_train_samples(data, spec)
    assert train[0].turns == (("<image>\nWhat colour? One word.", "red"),)  # the most frequent of the ten


def test_captions_become_a_coco_file_and_one_chat_per_caption(tmp_path, data):
    rows = {"image": [RED, BLUE], "caption": [["a red card", "red"], ["a blue card"]]}
    DatasetDict(train=dataset(dict(rows)), test=dataset(dict(rows))).save_to_disk(str(tmp_path / "caps"))
    code, output = dmole("import", str(tmp_path / "caps"), "--data", str(data), "-t", "caps", "--family", "caption")
    assert code == 0, output
    [spec] = read_registry(data / "tasks.json")
    coco = json.loads((data / spec.eval).read_text())
    assert [a["caption"] for a in coco["annotations"]] == ["a red card", "red", "a blue card"]
    assert [s.references["references"] for s in load_eval_samples(data, spec)] == rows["caption"]
    assert [t.turns[0][1] for t in load_train_samples(data, spec)] == ["a red card", "red", "a blue card"]


def test_grounding_boxes_in_coco_xywh_become_pixel_boxes_and_answers(tmp_path, data):
    rows = {"image": [RED], "sent": ["the card"], "bbox": [[2.0, 1.0, 10.0, 5.0]]}
    DatasetDict(train=dataset(dict(rows)), test=dataset(dict(rows))).save_to_disk(str(tmp_path / "boxes"))
    code, output = dmole(
        "import", str(tmp_path / "boxes"), "--data", str(data), "-t", "where", "--family", "grounding", "--bbox", "xywh"
    )
    assert code == 0, output
    [spec] = read_registry(data / "tasks.json")
    assert load_eval_samples(data, spec)[0].references == {"bbox": [2.0, 1.0, 12.0, 6.0], "width": 20.0, "height": 10.0}
    assert load_train_samples(data, spec)[0].turns[0][1] == "[[100,100,600,600]]"


@pytest.mark.parametrize(
    "edit, args, expected",
    [
        (lambda rows: rows["answer"].__setitem__(1, 5), [], "field 'test[1].answer': index 5 is outside the 2 choices"),
        (lambda rows: None, ["--map", "answer=nothing"], "--map answer=nothing: no such column"),
        (
            lambda rows: rows.pop("answer"),
            [],
            "no column for the choice field 'answer'; name one with --map answer=COLUMN",
        ),
        (lambda rows: None, ["--eval-split", "dev"], "no eval split 'dev'; the dataset has test, train"),
    ],
)
def test_a_bad_dataset_is_one_line_and_leaves_nothing(tmp_path, data, edit, args, expected):
    rows = {k: list(v) for k, v in CHOICE_ROWS.items() if k != "label"} | {"answer": [0, 1, 0]}
    edit(rows)
    DatasetDict(train=dataset(dict(rows)), test=dataset(dict(rows))).save_to_disk(str(tmp_path / "bad"))
    code, output = dmole(
        "import",
        str(tmp_path / "bad"),
        "--data",
        str(data),
        "-t",
        "bad",
        "--family",
        "choice",
        "--map",
        "question=query",
        *args,
    )
    assert code == 2 and expected in " ".join(output.split()), output
    assert list(data.iterdir()) == []  # no task folder, no registry, no staging folder


def test_a_task_is_not_replaced_without_overwrite(tmp_path, data):
    rows = {"image": [RED], "question": ["q"], "answer": ["a"]}
    DatasetDict(train=dataset(dict(rows)), test=dataset(dict(rows))).save_to_disk(str(tmp_path / "s"))
    args = ["import", str(tmp_path / "s"), "--data", str(data), "-t", "s", "--family", "short"]
    assert dmole(*args)[0] == 0
    code, output = dmole(*args)
    assert code == 2 and "already exists; pass --overwrite" in output
    assert dmole(*args, "--overwrite", "--prompt", "{question}?")[0] == 0
    assert [t.prompt for t in read_registry(data / "tasks.json")] == ["{question}?"]


def test_a_training_split_with_its_own_conversations_is_taken_as_it_is(tmp_path, data):
    chat = [
        {"from": "human", "value": "<image>\nDescribe it."},
        {"from": "gpt", "value": "A red card."},
        {"from": "human", "value": "Its colour?"},
        {"from": "gpt", "value": "red"},
    ]
    train = dataset({"image": [RED], "conversations": [chat], "id": ["llava-1"]})
    test = dataset({"image": [RED], "question": ["Its colour?"], "answer": ["red"]})
    DatasetDict(train=train, test=test).save_to_disk(str(tmp_path / "chat"))
    code, output = dmole("import", str(tmp_path / "chat"), "--data", str(data), "-t", "chat", "--family", "short")
    assert code == 0, output
    [sample] = load_train_samples(data, read_registry(data / "tasks.json")[0])
    assert sample.id == "llava-1" and sample.turns == (("<image>\nDescribe it.", "A red card."), ("Its colour?", "red"))


# Runs `dmole import --overwrite` in a process that SIGKILLs itself at its N-th rename or removal (os.replace,
# os.rename, shutil.rmtree: every step that changes what the data root holds, the writes into the hidden staging
# folder aside), the import's own steps and those of the libraries it calls alike.
KILLED_IMPORT = """
import os, shutil, signal, sys
from pathlib import Path
left = int(sys.argv[1])
def killing(step):
    def wrapped(*args, **kwargs):
        global left
        left -= 1
        if left < 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(*args, **kwargs)
    return wrapped
os.replace, os.rename, shutil.rmtree = killing(os.replace), killing(os.rename), killing(shutil.rmtree)
from dmole.stages.import_data import import_dataset
import_dataset(Path(sys.argv[2]), Path(sys.argv[3]), "s", "short", overwrite=True, prompt="{question} (new)")
"""


def _tree(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def test_an_import_killed_at_any_step_leaves_the_old_task_or_the_new_one_whole(tmp_path, data):
    def save(name, rows):
        DatasetDict(train=dataset(dict(rows)), test=dataset(dict(rows))).save_to_disk(str(tmp_path / name))
        return str(tmp_path / name)

    old = save("old", {"image": [RED], "question": ["q"], "answer": ["a"]})
    new = save("new", {"image": [BLUE, RED], "question": ["q1", "q2"], "answer": ["b", "c"]})
    (data / "other").mkdir()
    (data / "tasks.json").write_text(
        '{"tasks": [{"name": "other", "family": "short", "train": "other/t.jsonl", "eval": "other/e.jsonl"}]}'
    )
    assert dmole("import", old, "--data", str(data), "-t", "s", "--family", "short")[0] == 0
    before = _tree(data)
    shutil.copytree(data, tmp_path / "before")
    shutil.copytree(data, tmp_path / "reference")
    assert (
        dmole(
            "import",
            new,
            "--data",
            str(tmp_path / "reference"),
            "-t",
            "s",
            "--family",
            "short",
            "--overwrite",
            "--prompt",
            "{question} (new)",
        )[0]
        == 0
    )
    after = _tree(tmp_path / "reference")
    assert after != before and read_registry(tmp_path / "reference" / "tasks.json")[1].prompt == "{question} (new)"
    outcomes = []
    for budget in range(100):
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "before", data)
        run = subprocess.run(
            [sys.executable, "-c", KILLED_IMPORT, str(budget), new, str(data)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
            check=False,
        )
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, run.stderr.decode()
        complete_imports(data)  # what the next import, or opening a workspace over this data root, does first
        state = _tree(data)
        assert state in (before, after), f"killed at step {budget}: {sorted(set(state) ^ set(before))}"
        outcomes.append(state == after)
    assert budget > 3 and True in outcomes and False in outcomes, outcomes  # killed before and after the commit


def test_one_import_at_a_time_per_data_root(tmp_path, data):
    DatasetDict(train=dataset(dict(CHOICE_ROWS)), test=dataset(dict(CHOICE_ROWS))).save_to_disk(str(tmp_path / "s"))
    with import_lock(data):  # another import holds the data root
        code, output = dmole(
            "import",
            str(tmp_path / "s"),
            "--data",
            str(data),
            "-t",
            "s",
            "--family",
            "choice",
            "--map",
            "question=query",
            "--map",
            "answer=label",
        )
    assert code == 2 and "is being imported into by another process" in output, output
    assert list(data.iterdir()) == []
