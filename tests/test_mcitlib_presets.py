"""The UCIT and MLLM-DCL presets over miniatures of MCITlib's layout (tests/mcitlib_archive.py): the published
sequences and settings, every task's files read as distributed, the caption pair form, the field's grader rule
per task, and the loop through `dmole` after `dmole init --benchmark ucit | mllm-dcl`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dmole.cli.app import app
from dmole.stages.data.benchmarks import benchmark
from dmole.stages.data.errors import DataError
from dmole.stages.data.mcitlib_benchmarks import DCL_TASKS, UCIT_TASKS
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples, load_train_samples, task_files
from dmole.stages.metrics import mcitlib_rules
from dmole.stages.metrics.field_graders import rule_for
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.registry import ALLOCATE, EMBED, EVAL, FIT_ROUTER, TRAIN_TASK, ZC_SCORE
from mcitlib_archive import write_mcitlib_archive

torch.set_num_threads(1)
runner = CliRunner()
PER_TASK = 3
# MCITlib's train_all.sh orders (Train_UCIT, Train_DCL), as the issue and the papers list them
UCIT_ORDER = ["ImageNet-R", "ArxivQA", "VizWiz", "IconQA", "CLEVR-Math", "Flickr30k"]
DCL_ORDER = ["RS", "Med", "AD", "Sci", "Fin"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_mcitlib_archive(tmp_path_factory.mktemp("mcitlib"), per_task=PER_TASK)


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    """A tiny LLaVA (the field's family), random weights."""
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


def test_the_presets_are_mcitlibs_sequences_and_settings():
    assert [task.name for task in benchmark("ucit").tasks] == UCIT_ORDER
    assert [task.name for task in benchmark("mllm-dcl").tasks] == DCL_ORDER
    # configs/model_configs/LLaVA/*/train/taskN.json: 4 per device x 8 GPUs x 2 accumulation
    assert {task.batch_size for task in (*UCIT_TASKS, *DCL_TASKS)} == {4 * 8 * 2}
    assert [task.epochs for task in UCIT_TASKS] == [1] * 6
    assert [task.epochs for task in DCL_TASKS] == [1, 3, 1, 2, 1]
    # model_others.py: 256 new tokens; model_ai2d / model_pvqa / model_fin: --max_new_tokens 128; no minimum
    assert [task.generation_limits for task in UCIT_TASKS] == [(256, 0)] * 6
    assert [task.generation_limits for task in DCL_TASKS] == [(128, 0)] * 5
    assert [task.family for task in UCIT_TASKS] == ["short", "short", "caption", "short", "short", "caption"]
    assert {task.prompt for task in UCIT_TASKS} == {"{text}"}
    pvqa = "{text} Answer the question with a single word (or phrase)."  # model_pvqa.py
    assert [task.prompt for task in DCL_TASKS] == ["{text}", pvqa, "{text}", "{text}", "{text}"]
    for task in UCIT_TASKS:
        assert (task.train, task.eval, task.image_root) == (
            f"UCIT/{task.name}/train.json",
            f"UCIT/{task.name}/test.json",
            "UCIT/datasets",
        )
    for task in DCL_TASKS:
        assert (task.train, task.eval, task.image_root) == (
            f"Domain_data/{task.name}/train.json",
            f"Domain_data/{task.name}/test.json",
            f"Domain_data/{task.name}",
        )


def test_each_task_names_mcitlibs_own_rule():
    """Tasks are named as MCITlib's folders, so the mcitlib grader picks each by name, never by family."""
    for task in (*UCIT_TASKS, *DCL_TASKS):
        assert rule_for("mcitlib", task.family, task.name) == mcitlib_rules.TASK_RULES[task.name]
    assert {rule_for("mcitlib", t.family, t.name) for t in DCL_TASKS} == {
        "mcitlib-ai2d",
        "mcitlib-pvqa",
        "mcitlib-sci",
        "mcitlib-finvis",
    }


@pytest.mark.parametrize("preset", ["ucit", "mllm-dcl"])
def test_every_task_reads_the_archive_as_distributed(archive, preset):
    for task in benchmark(preset).tasks:
        train, test = load_train_samples(archive, task), load_eval_samples(archive, task)
        assert len(train) == PER_TASK and len(test) == PER_TASK, task.name
        for sample in [*train, *test]:
            assert sample.image.is_file() and sample.image.is_relative_to(archive.resolve())
        questions = json.loads((archive / task.eval).read_text())
        assert [sample.id for sample in test] == [q["question_id"] for q in questions]
        for sample, question in zip(test, questions):
            assert render_prompt(task, sample) == task.prompt.format(text=question["text"])
            if task.family == "short":
                assert sample.references["answer"] == [question["answer"]]


def test_caption_references_are_the_coco_entries_of_each_questions_position(archive):
    """eval_caption.py numbers the replies 1..N in question order; image_id k holds question k's references."""
    task = UCIT_TASKS[UCIT_ORDER.index("VizWiz")]
    coco = json.loads((archive / task.eval_annotations).read_text())
    test = load_eval_samples(archive, task)
    for position, sample in enumerate(test, start=1):
        assert sample.references["references"] == [
            a["caption"] for a in coco["annotations"] if a["image_id"] == position
        ]
    assert task_files(archive, task)[-1].name == "val_coco_type_3000.json"


def test_a_question_without_its_coco_entry_is_one_data_error(archive, tmp_path):
    task = UCIT_TASKS[UCIT_ORDER.index("Flickr30k")]
    data = tmp_path / "archive"
    shutil.copytree(archive / "UCIT", data / "UCIT")
    path = data / task.eval_annotations
    coco = json.loads(path.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 2]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"image_id 2 \(question 2 of .*test\.json\) has no caption annotation"):
        load_eval_samples(data, task)


def test_init_checks_the_layout(archive, llava, tmp_path):
    ws = str(tmp_path / "ws")
    line = one_line_error(
        "init", "--benchmark", "ucit", "--model", str(llava), "--data", str(archive / "UCIT"), "--workspace", ws
    )
    assert "has no 'UCIT' folder" in line and f"pass its parent {archive.resolve()}" in line
    data = tmp_path / "archive"
    shutil.copytree(archive / "Domain_data", data / "Domain_data")
    shutil.rmtree(data / "Domain_data/Fin")
    line = one_line_error(
        "init", "--benchmark", "mllm-dcl", "--model", str(llava), "--data", str(data), "--workspace", ws
    )
    assert "task 'Fin'" in line and "Domain_data/Fin/train.json (train) does not exist" in line
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "preset, tasks",
    [
        pytest.param("ucit", ["ImageNet-R", "VizWiz"], marks=pytest.mark.slow),  # ~16 s: its caption task's scoring
        ("mllm-dcl", ["RS", "Med"]),
    ],
)
def test_the_loop_through_the_cli(llava, tmp_path, preset, tasks):
    """init --benchmark on two of the preset's tasks (a short answer and a caption or a second rule), then every
    stage to the report, one optimizer step a task: no file edited by hand except the stage overrides for speed."""
    archive = write_mcitlib_archive(tmp_path / "archive", per_task=2)
    ws = tmp_path / "ws"
    dmole(
        "init",
        "--benchmark",
        preset,
        "--tasks",
        ",".join(tasks),
        "--model",
        str(llava),
        "--data",
        str(archive),
        "--workspace",
        str(ws),
    )
    settings = json.loads((ws / "workspace.json").read_text())
    assert [task["name"] for task in settings["tasks"]] == tasks
    stages = {
        FIT_ROUTER.name: {"max_epochs": 5},
        TRAIN_TASK.name: {"epochs": 1, "batch_size": 2},
        EVAL.name: {"batch_size": 2},
    }
    (ws / "workspace.json").write_text(json.dumps({**settings, "stages": stages}))
    for task in tasks:
        for stage in (EMBED, FIT_ROUTER, ZC_SCORE, ALLOCATE):
            dmole(stage.name, "--task", task, "--workspace", str(ws))
    for task in tasks:
        dmole(TRAIN_TASK.name, "--task", task, "--workspace", str(ws))
        dmole(EVAL.name, "--after", task, "--workspace", str(ws))
    result = runner.invoke(app, ["report", "--json", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tasks"] == tasks
    matrix = report["methods"]["dmole"]["matrix"]
    assert len(matrix) == 1 + len(tasks)
    assert all(value is not None for row in matrix[1:] for value in row)
    check_run_settings(ws, report["run_settings"], tasks)


def check_run_settings(ws: Path, settings: dict, tasks: list[str]) -> None:
    """The report's run settings equal its training runs' manifests and the machine; report.md's section says
    them, and a forced rerun writes the same report.md byte for byte."""
    import platform

    from dmole.stages.project import Project
    from dmole.stages.registry import REPORT

    project = Project.open(ws)
    trained = [project.store.latest(TRAIN_TASK.name, task) for task in tasks]
    assert settings["environment"]["torch"] == [torch.__version__]
    assert settings["environment"]["cuda"] == [torch.version.cuda]
    assert settings["environment"]["dtype"] == ["bfloat16" if torch.cuda.is_available() else "float32"]
    assert settings["seeds"] == [project.config.seed]
    for shown, version in zip(settings["training"], trained, strict=True):
        loop = version.manifest["config"]["loop"]
        assert (shown["global_batch"], shown["grad_accum"], shown["seed"]) == (2, 1, loop["seed"])
        assert shown["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")  # the precision "auto"
        assert shown["per_device"] * shown["processes"] * shown["grad_accum"] == shown["global_batch"]
    caption = [task for task in tasks if project.config.task(task).family == "caption"]
    assert {g["task"] for g in settings["graders"]} == set(tasks)
    assert all((g["tokenizer"] is not None) == (g["task"] in caption) for g in settings["graders"])
    first = project.store.latest(REPORT.name, "all").file(REPORT.files.markdown).read_bytes()
    section = first.decode().split("## Run settings", 1)[1]
    assert f"- torch: {torch.__version__}" in section and f"{platform.python_version()}" not in section
    assert f"| {TRAIN_TASK.name} {tasks[0]} | 2 = 2 × 1 × 1 | {settings['training'][0]['precision']} |" in section
    dmole("report", "--force", "--quiet", "--workspace", str(ws))
    again = project.store.latest(REPORT.name, "all")
    assert again.file(REPORT.files.markdown).read_bytes() == first
