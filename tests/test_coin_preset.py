"""The CoIN preset over a miniature of CoIN's layout (tests/coin_archive.py): the published sequence and settings,
every task's files read as distributed (the original datasets' answer files included), CoIN's grader rule per
task, and the loop through `dmole` after `dmole init --benchmark coin`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from coin_archive import GROUNDING_SIZE, write_coin_archive
from dmole.cli.app import app
from dmole.stages.data.benchmarks import benchmark
from dmole.stages.data.coin_benchmark import COIN_TASKS
from dmole.stages.data.errors import DataError
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples, load_train_samples, task_files
from dmole.stages.metrics import coin_rules
from dmole.stages.metrics.field_graders import rule_for, score_rule
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.registry import ALLOCATE, EMBED, EVAL, FIT_ROUTER, TRAIN_TASK, ZC_SCORE

torch.set_num_threads(1)
runner = CliRunner()
PER_TASK = 3
# scripts/LLaVA/Train/1_Science.sh ... 8_OCRVQA.sh (each --previous_task_model_path the script before's output)
ORDER = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]
# their --per_device_train_batch_size; each runs on 8 GPUs with --gradient_accumulation_steps 8
PER_DEVICE = [14, 14, 16, 6, 14, 6, 8, 10]
# model_vqa_science.py and model_vqa.py: 1024 (hard-coded); model_text_vqa/gqa/vizwiz/ocr_vqa.py: --max_new_tokens 128
MAX_NEW_TOKENS = [1024, 128, 1024, 128, 128, 1024, 1024, 128]
# the Eval scripts' --question-file names
QUESTION_FILES = ["test.json", "val.json", "test.json", "test.json", "val.json", "test.json", "val.json", "test.json"]
TASKS = {task.name: task for task in COIN_TASKS}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_coin_archive(tmp_path_factory.mktemp("coin"), per_task=PER_TASK)


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    """A tiny LLaVA (CoIN's family), random weights."""
    return build_tiny(
        "llava",
        tmp_path_factory.mktemp("tiny") / "llava",
        size=TinySize(lm_layers=2, vision_layers=2, lm_hidden=64, lm_intermediate=128),
    )


def dmole(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


def one_line_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_the_preset_is_coins_sequence_and_settings():
    assert [task.name for task in benchmark("coin").tasks] == ORDER
    assert [task.batch_size for task in COIN_TASKS] == [b * 8 * 8 for b in PER_DEVICE]
    assert [task.epochs for task in COIN_TASKS] == [1] * 8  # --num_train_epochs 1
    assert [task.generation_limits for task in COIN_TASKS] == [(n, 0) for n in MAX_NEW_TOKENS]
    assert {task.prompt for task in COIN_TASKS} == {"{text}"}  # model_*.py: qs = line["text"]
    assert [task.family for task in COIN_TASKS] == [
        "choice",
        "vqa10",
        "short",
        "short",
        "short",
        "grounding",
        "short",
        "short",
    ]
    for task, question_file in zip(COIN_TASKS, QUESTION_FILES):
        folder = f"playground/Instructions_Original/{task.name}"
        assert (task.train, task.eval, task.image_root) == (
            f"{folder}/train.json",
            f"{folder}/{question_file}",
            "cl_dataset",
        )
    # the original datasets' files that eval_science_qa.py, eval_textvqa.py and eval_gqa.py score with
    assert {task.name: task.eval_annotations for task in COIN_TASKS if task.eval_annotations} == {
        "ScienceQA": "cl_dataset/ScienceQA/problems.json",
        "TextVQA": "cl_dataset/TextVQA/TextVQA_0.5.1_val.json",
        "GQA": "cl_dataset/GQA/testdev_balanced_questions.json",
    }
    assert [task.name for task in COIN_TASKS if task.skip_text_only] == ["ScienceQA"]


def test_each_task_names_coins_own_rule():
    """Tasks are named as CoIN's instruction folders, so the coin grader picks each by name."""
    assert {task.name: rule_for("coin", task.family, task.name) for task in COIN_TASKS} == coin_rules.TASK_RULES
    assert set(coin_rules.TASK_RULES.values()) == set(coin_rules.RULES)


def _questions(archive: Path, task) -> list[dict]:
    return json.loads((archive / task.eval).read_text())


def test_every_task_reads_the_archive_as_distributed(archive):
    for task in COIN_TASKS:
        train, test = load_train_samples(archive, task), load_eval_samples(archive, task)
        assert len(train) == PER_TASK and len(test) == PER_TASK, task.name  # ScienceQA's text-only entry left out
        for sample in [*train, *test]:
            assert sample.image.is_file() and sample.image.is_relative_to((archive / "cl_dataset").resolve())
        questions = [q for q in _questions(archive, task) if "image" in q]
        assert [sample.id for sample in test] == [str(q["question_id"]) for q in questions]
        for sample, question in zip(test, questions):
            # model_vqa_science.py: question.replace('<image>', '').strip(); the others take the text whole
            expected = question["text"].replace("<image>", "").strip() if task.name == "ScienceQA" else question["text"]
            assert render_prompt(task, sample) == expected and "<image>" not in expected
            if task.family == "short" and task.eval_annotations is None:
                assert sample.references == {"answer": [question["answer"]]}


def test_scienceqa_scores_on_the_problems_choices_and_gold_index(archive):
    task = TASKS["ScienceQA"]
    problems = json.loads((archive / "cl_dataset/ScienceQA/problems.json").read_text())
    for sample in load_eval_samples(archive, task):
        problem = problems[sample.id]
        assert sample.references == {"choices": problem["choices"], "answer": problem["answer"]}
        gold = "AB"[problem["answer"]]
        assert score_rule("coin-scienceqa", [gold, "B. no"], [sample.references] * 2)[1] == [100.0, 0.0]


def test_textvqa_and_gqa_answers_come_from_the_datasets_files(archive, tmp_path):
    textvqa = json.loads((archive / TASKS["TextVQA"].eval_annotations).read_text())["data"]
    for sample in load_eval_samples(archive, TASKS["TextVQA"]):
        (entry,) = [e for e in textvqa if str(e["question_id"]) == sample.id]
        assert sample.references == {"answers": entry["answers"]}
        assert score_rule("coin-textvqa", [entry["answers"][0]], [sample.references])[0] == pytest.approx(100.0)
    # GQA: eval_gqa.py compares with testdev_balanced_questions.json, not the question file's "answer"
    data = tmp_path / "archive"
    shutil.copytree(archive, data)
    path = data / TASKS["GQA"].eval_annotations
    questions = json.loads(path.read_text())
    first = str(_questions(data, TASKS["GQA"])[0]["question_id"])
    questions[first]["answer"] = "teal"
    path.write_text(json.dumps(questions))
    samples = load_eval_samples(data, TASKS["GQA"])
    assert samples[0].references == {"answer": ["teal"]}
    del questions[first]
    path.write_text(json.dumps(questions))
    with pytest.raises(DataError, match=rf"field '\[0\]\.question_id': question '{first}' has no entry in .*questions"):
        load_eval_samples(data, TASKS["GQA"])


def test_grounding_boxes_are_read_in_the_padded_square(archive):
    """answer_bbox is 0-1 in the square the image is padded to; the family's pixel box is that square's, which
    minus the padding is the box drawn in the image (tests/coin_archive.py), to the file's two decimals."""
    task = TASKS["Grounding"]
    width, height = GROUNDING_SIZE
    side = max(width, height)
    for k, (sample, question) in enumerate(zip(load_eval_samples(archive, task), _questions(archive, task))):
        refs = sample.references
        assert (refs["width"], refs["height"], refs["size"], refs["answer_bbox"]) == (
            side,
            side,
            question["size"],
            question["answer_bbox"],
        )
        pad = (side - height) / 2
        drawn = (4 + k, 4 + pad, 20 + k, 18 + pad)
        assert refs["bbox"] == pytest.approx(drawn, abs=0.005 * side + 1e-9)  # half the last decimal, in pixels
        # CoIN's rule and dmole's read a reply in the same square coordinates
        reply = "[" + ", ".join(f"{v / side:.3f}" for v in drawn) + "]"
        assert score_rule("coin-grounding", [reply], [refs])[0] == 100.0
        assert score_rule("dmole-grounding", [reply], [refs])[0] == 100.0
        assert score_rule("dmole-grounding", ["[0.0, 0.0, 0.2, 0.2]"], [refs])[0] == 0.0


def test_a_text_only_entry_is_an_error_unless_skipped(archive):
    task = TASKS["ScienceQA"].model_copy(update={"skip_text_only": False})
    with pytest.raises(DataError, match=r"train\.json: field '\[\d+\]\.image': missing: dmole trains on image"):
        load_train_samples(archive, task)
    with pytest.raises(DataError, match=r"test\.json: field '\[\d+\]\.image': expected a relative image path"):
        load_eval_samples(archive, task)
    assert [path.name for path in task_files(archive, task)] == ["train.json", "test.json", "problems.json"]


def test_init_checks_the_layout(archive, llava, tmp_path):
    ws = str(tmp_path / "ws")
    line = one_line_error(
        "init", "--benchmark", "coin", "--model", str(llava), "--data", str(archive / "playground"), "--workspace", ws
    )
    assert "has no 'playground' folder" in line and f"pass its parent {archive.resolve()}" in line
    data = tmp_path / "archive"
    shutil.copytree(archive, data)
    (data / "cl_dataset/GQA/testdev_balanced_questions.json").unlink()
    line = one_line_error("init", "--benchmark", "coin", "--model", str(llava), "--data", str(data), "--workspace", ws)
    assert "task 'GQA'" in line and "testdev_balanced_questions.json (eval_annotations) does not exist" in line
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "tasks",
    [
        # ~40 s: both generate up to 1024 tokens (model_vqa_science.py, model_vqa.py) from a random model
        pytest.param(["ScienceQA", "Grounding"], marks=pytest.mark.slow),
        ["TextVQA", "GQA"],
    ],
)
def test_the_loop_through_the_cli(llava, tmp_path, tasks):
    """init --benchmark coin on two tasks (the keyed choice answers with a text-only problem and boxes in the
    padded square; or the datasets' own answer files), then every stage to the report, one optimizer step a task,
    every setting on the command line: no file edited by hand."""
    archive = write_coin_archive(tmp_path / "archive", per_task=2)
    ws = str(tmp_path / "ws")
    names = ",".join(tasks)
    dmole(
        "init",
        "--benchmark",
        "coin",
        "--tasks",
        names,
        "--model",
        str(llava),
        "--data",
        str(archive),
        "--workspace",
        ws,
    )
    settings = json.loads((Path(ws) / "workspace.json").read_text())
    assert [task["name"] for task in settings["tasks"]] == tasks
    for task in tasks:
        for stage in (EMBED, ZC_SCORE):
            dmole(stage.name, "--task", task, "--workspace", ws)
        dmole(FIT_ROUTER.name, "--task", task, "--max-epochs", "5", "--workspace", ws)
        dmole(ALLOCATE.name, "--task", task, "--workspace", ws)
    for task in tasks:
        dmole(TRAIN_TASK.name, "--task", task, "--epochs", "1", "--batch-size", "2", "--workspace", ws)
        dmole(EVAL.name, "--after", task, "--batch-size", "2", "--workspace", ws)
    result = runner.invoke(app, ["report", "--json", "--workspace", ws])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tasks"] == tasks
    matrix = report["methods"]["dmole"]["matrix"]
    assert len(matrix) == 1 + len(tasks)
    assert all(value is not None for row in matrix[1:] for value in row)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda entry: entry.pop("choices"), r"problems\.json: field '{id}\.choices': missing"),
        (
            lambda entry: entry.update(answer=2),
            r"problems\.json: field '{id}\.answer': index 2 is outside the 2 choices",
        ),
        (lambda entry: entry.clear() or entry.update(x=[]), r"problems\.json: field '{id}\.question': missing"),
    ],
)
def test_keyed_answer_errors_name_the_file_and_the_entry(archive, tmp_path, edit, expected):
    data = tmp_path / "archive"
    shutil.copytree(archive, data)
    path = data / TASKS["ScienceQA"].eval_annotations
    problems = json.loads(path.read_text())
    first = str(_questions(data, TASKS["ScienceQA"])[0]["question_id"])
    edit(problems[first])
    path.write_text(json.dumps(problems))
    with pytest.raises(DataError, match=expected.format(id=first)):
        load_eval_samples(data, TASKS["ScienceQA"])
    path.write_text(json.dumps([problems[first]]))
    with pytest.raises(DataError, match=r"problems\.json: expected a JSON object keyed by question id"):
        load_eval_samples(data, TASKS["ScienceQA"])
