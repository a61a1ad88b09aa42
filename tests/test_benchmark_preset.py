"""The official D-MoLE benchmark preset over a miniature of the official data archive (tests/official_archive.py):
every task's files read as distributed, the SK-VG knowledge prompt, the whole loop through `dmole` after
`dmole init --benchmark dmole`, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dmole.cli.app import app
from dmole.stages.config import ConfigError, TaskSpec, parse_model
from dmole.stages.data.benchmarks import BENCHMARKS, DMOLE_TASKS, REFERENCE_GPUS
from dmole.stages.data.errors import DataError
from dmole.stages.data.eval_files import read_eval_file
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples, load_train_samples, task_files
from dmole.stages.models.tiny import TinySize, build_tiny
from official_archive import write_official_archive

torch.set_num_threads(1)
runner = CliRunner()
PER_TASK = 3
ORDER = ["vizwiz-caption", "skvg", "textcaps", "iconqa", "ocrvqa", "flickr30k", "vizwiz", "kvqa", "pmcvqa"]
LOOP_STAGES = {
    "fit-router": {"max_epochs": 20},
    "train-task": {"epochs": 1, "batch_size": 2},
    "eval": {"batch_size": 2},
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_official_archive(tmp_path_factory.mktemp("archive"), per_task=PER_TASK)


@pytest.fixture(scope="module")
def internvl(tmp_path_factory) -> Path:
    """A tiny InternVL (the paper's family), random weights."""
    return build_tiny(
        "internvl",
        tmp_path_factory.mktemp("tiny") / "internvl",
        size=TinySize(lm_layers=2, vision_layers=2, lm_hidden=64, lm_intermediate=128),
    )


def _task(name: str) -> TaskSpec:
    return next(task for task in DMOLE_TASKS if task.name == name)


def dmole(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


def one_line_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


# --- the preset ---------------------------------------------------------------------------------------------


def test_the_preset_is_the_official_sequence_and_training_setup():
    assert [task.name for task in DMOLE_TASKS] == ORDER
    assert [task.family for task in DMOLE_TASKS] == [
        "caption",
        "grounding",
        "caption",
        "choice",
        "short",
        "caption",
        "vqa10",
        "short",
        "choice",
    ]
    # scripts/train/dmole.sh: per-device batch 10 (OCR-VQA 8) on 8 GPUs; batch_size is the global batch.
    assert REFERENCE_GPUS == 8
    assert [task.batch_size for task in DMOLE_TASKS] == [80, 80, 80, 80, 64, 80, 80, 80, 80]
    assert [task.epochs for task in DMOLE_TASKS] == [1, 5, 1, 1, 1, 1, 5, 1, 1]
    assert [task.repeat for task in DMOLE_TASKS] == [1, 1, 1, 5, 1, 1, 1, 1, 1]
    assert [task.generation_limits for task in DMOLE_TASKS] == [
        (30, 8),
        (100, 1),
        (30, 8),
        (10, 1),
        (100, 1),
        (30, 8),
        (10, 1),
        (100, 1),
        (10, 1),
    ]
    for task in DMOLE_TASKS:
        assert f"per-device batch {task.batch_size // 8} x 8 GPUs = global {task.batch_size}" in task.description
        assert task.train.startswith("data/") and task.eval.startswith("data/")
    assert _task("vizwiz").eval_annotations == "data/vizwiz/vizwiz_val_annotations.json"
    assert list(BENCHMARKS) == ["dmole", "ucit", "mllm-dcl", "coin"]
    # the training vote's group is the per-device batch; evaluation votes over the batch the scripts' defaults
    # give when dmole.sh evaluates (spec §9: 10 for caption and grounding, 8 for VQA and multiple choice)
    assert [task.vote_size for task in DMOLE_TASKS] == [task.batch_size // REFERENCE_GPUS for task in DMOLE_TASKS]
    by_family = {"caption": 10, "grounding": 10, "vqa10": 8, "short": 8, "choice": 8}
    assert [task.eval_batch_size for task in DMOLE_TASKS] == [by_family[task.family] for task in DMOLE_TASKS]


def test_the_reference_profile_votes_in_the_references_groups(archive, internvl, tmp_path):
    """Under --profile reference with the preset, eval votes per the reference's evaluation batch and train-task
    per its device batch, whatever the accumulation; a flag still wins, and per-sample eval keeps its batch."""
    from dmole.stages.options import DEFAULT_EVAL_BATCH_SIZE
    from dmole.stages.project import Project
    from dmole.stages.resolve import stage_options
    from dmole.stages.train_task import train_run

    ws = tmp_path / "ws"
    dmole(
        "init",
        "--benchmark",
        "dmole",
        "--profile",
        "reference",
        "--model",
        str(internvl),
        "--data",
        str(archive),
        "--workspace",
        str(ws),
    )
    project = Project.open(ws)
    evaluation = stage_options(project.config, "eval")
    assert evaluation.routing == "batch-vote"
    for task in project.config.tasks:
        assert evaluation.for_task(task).batch_size == _task(task.name).eval_batch_size
        run = train_run(project, task.name, {"grad_accum": 8})[1]
        assert run.options.train_routing == "batch-vote"
        assert run.options.vote_size == _task(task.name).batch_size // REFERENCE_GPUS
    assert train_run(project, "ocrvqa", {"vote_size": 3})[1].options.vote_size == 3
    flagged = stage_options(project.config, "eval", {"batch_size": 3})
    assert flagged.for_task(project.config.task("kvqa")).batch_size == 3
    per_sample = stage_options(project.config, "eval", {"routing": "per-sample"})
    assert per_sample.for_task(project.config.task("skvg")).batch_size == DEFAULT_EVAL_BATCH_SIZE


def test_every_task_reads_the_archive_as_distributed(archive):
    for task in DMOLE_TASKS:
        train, test = load_train_samples(archive, task), load_eval_samples(archive, task)
        assert len(train) == PER_TASK and len(test) == PER_TASK, task.name
        for sample in [*train, *test]:
            assert sample.image.is_file() and sample.image.is_relative_to(archive.resolve())
        assert all(render_prompt(task, sample) for sample in test)
        if task.family == "caption":
            assert all(len(sample.references["references"]) == 3 for sample in test)
    vizwiz = load_eval_samples(archive, _task("vizwiz"))
    assert [sample.id for sample in vizwiz] == ["0", "1", "2"]
    assert all(len(sample.references["answers"]) == 10 for sample in vizwiz)
    assert task_files(archive, _task("vizwiz"))[-1].name == "vizwiz_val_annotations.json"
    skvg = load_eval_samples(archive, _task("skvg"))
    assert all(sample.prompt_fields["knowledge"] for sample in skvg)


def test_the_skvg_prompt_carries_the_samples_knowledge(archive):
    task = _task("skvg")
    for sample in load_eval_samples(archive, task):
        prompt = render_prompt(task, sample)
        assert prompt.startswith("Based on the knowledge ")
        assert f"Based on the knowledge {sample.prompt_fields['knowledge']}.\n" in prompt
        assert prompt.endswith(f"describes: <ref>{sample.prompt_fields['sent']}</ref>")


def test_a_knowledge_prompt_without_knowledge_names_the_field(archive, tmp_path):
    test = [json.loads(line) for line in (archive / "data/sk-vg/test.jsonl").read_text().splitlines()]
    del test[0]["knowledge"]
    (tmp_path / "data/sk-vg").mkdir(parents=True)
    (tmp_path / "data/sk-vg/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    shutil.copytree(archive / "data/sk-vg/images", tmp_path / "data/sk-vg/images")
    shutil.copy(archive / "data/sk-vg/train.jsonl", tmp_path / "data/sk-vg/train.jsonl")
    sample = load_eval_samples(tmp_path, _task("skvg"))[0]
    with pytest.raises(DataError, match="its prompt needs field 'knowledge'"):
        render_prompt(_task("skvg"), sample)


def test_a_prompt_that_is_not_a_template_is_one_data_error(archive):
    task = _task("kvqa").model_copy(update={"prompt": "{} Answer."})
    with pytest.raises(DataError, match="the prompt is not a valid template"):
        render_prompt(task, load_eval_samples(archive, task)[0])


def test_an_eval_image_root_outside_the_data_root_is_refused(archive):
    task = _task("textcaps").model_copy(update={"eval_image_root": "../elsewhere"})
    with pytest.raises(
        DataError, match=re.escape("field 'eval_image_root': task 'textcaps': '../elsewhere' escapes the data root")
    ):
        load_eval_samples(archive, task)


# --- the VQA pair form and the caption format --------------------------------------------------------------


def _pair(archive: Path, tmp_path: Path, edit_annotations=None, questions: str = "vizwiz_val.jsonl"):
    """Copies of VizWiz's questions and annotations (images stay in the archive) after ``edit_annotations``."""
    annotations = json.loads((archive / "data/vizwiz/vizwiz_val_annotations.json").read_text())
    if edit_annotations:
        edit_annotations(annotations["annotations"])
    path = tmp_path / "vizwiz_val_annotations.json"
    path.write_text(json.dumps(annotations))
    source = tmp_path / questions
    if questions.endswith(".jsonl"):
        shutil.copy(archive / "data/vizwiz/vizwiz_val.jsonl", source)
    return source, path


def _read_pair(archive, questions, annotations):
    return read_eval_file("vqa10", questions, data_root=archive, image_root=archive, annotations=annotations)


def test_pair_form_missing_annotation_names_the_question(archive, tmp_path):
    questions, annotations = _pair(archive, tmp_path, lambda entries: entries.pop(1))
    with pytest.raises(DataError) as caught:
        _read_pair(archive, questions, annotations)
    assert str(caught.value) == (f"{questions}:2: field 'question_id': question 1 has no entry in {annotations}")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda e: e[2]["answers"].pop(), "field 'annotations[2].answers': expected 10 answer strings"),
        (lambda e: e[0].pop("question_id"), "field 'annotations[0].question_id': missing"),
        (
            lambda e: e.append(dict(e[0])),
            "field 'annotations[3].question_id': question_id 0 is annotated more than once",
        ),
        (lambda e: e[1]["answers"].__setitem__(4, {"answer": 7}), "field 'annotations[1].answers': expected 10"),
    ],
)
def test_pair_form_annotation_errors_name_the_entry(archive, tmp_path, edit, expected):
    questions, annotations = _pair(archive, tmp_path, edit)
    with pytest.raises(DataError) as caught:
        _read_pair(archive, questions, annotations)
    assert str(caught.value).startswith(f"{annotations}: ") and expected in str(caught.value)


def test_pair_form_with_a_questions_json(archive, tmp_path):
    """VQAv2-style questions JSON: read when its entries name their image; image_id alone is refused."""
    questions, annotations = _pair(archive, tmp_path, questions="questions.json")
    entries = json.loads((archive / "data/vizwiz/vizwiz_val_questions.json").read_text())
    questions.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"field 'questions\[0\].image': missing \(an image_id alone"):
        _read_pair(archive, questions, annotations)
    for i, entry in enumerate(entries["questions"]):
        entry["image"] = f"data/vizwiz/val/VizWiz_val_{i:08d}.jpg"
    questions.write_text(json.dumps(entries))
    samples = _read_pair(archive, questions, annotations)
    assert [s.id for s in samples] == ["0", "1", "2"] and all(len(s.references["answers"]) == 10 for s in samples)


def test_pair_form_is_not_for_grounding():
    with pytest.raises(ConfigError, match=r"eval_annotations .* is for the vqa10, .* families, not 'grounding'"):
        parse_model(
            TaskSpec,
            {"name": "x", "family": "grounding", "train": "t.jsonl", "eval": "e.jsonl", "eval_annotations": "a.json"},
            source="tasks.json",
        )


def test_caption_files_may_name_images_by_image(archive, tmp_path):
    """The reference's caption reader takes 'file_name', else 'image'."""
    document = json.loads((archive / "data/textcaps/val.json").read_text())
    for entry in document["images"]:
        entry["image"] = entry.pop("file_name")
    path = tmp_path / "val.json"
    path.write_text(json.dumps(document))
    samples = read_eval_file("caption", path, data_root=archive, image_root=archive / "data/textcaps/images")
    assert len(samples) == PER_TASK
    document["images"][1]["image"] = "missing.jpg"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"field 'images\[1\].image': image file 'missing.jpg' does not exist"):
        read_eval_file("caption", path, data_root=archive, image_root=archive / "data/textcaps/images")


# --- dmole init --benchmark ---------------------------------------------------------------------------------


def test_init_errors_are_one_line(archive, internvl, tmp_path):
    ws = str(tmp_path / "ws")
    assert "unknown benchmark 'nope'; known benchmarks: dmole, ucit, mllm-dcl, coin" in one_line_error(
        "init", "--benchmark", "nope", "--model", str(internvl), "--data", str(archive), "--workspace", ws
    )
    assert "--registry and --benchmark are mutually exclusive" in one_line_error(
        "init",
        "--benchmark",
        "dmole",
        "--registry",
        str(archive / "tasks.json"),
        "--model",
        str(internvl),
        "--data",
        str(archive),
        "--workspace",
        ws,
    )
    assert "unknown task 'vizwiz_caption'; benchmark 'dmole' has: vizwiz-caption, skvg" in one_line_error(
        "init",
        "--benchmark",
        "dmole",
        "--tasks",
        "vizwiz_caption",
        "--model",
        str(internvl),
        "--data",
        str(archive),
        "--workspace",
        ws,
    )
    line = one_line_error(
        "init", "--benchmark", "dmole", "--model", str(internvl), "--data", str(archive / "data"), "--workspace", ws
    )
    assert "has no 'data' folder" in line and f"pass its parent {archive.resolve()}" in line
    assert not (tmp_path / "ws").exists()


def test_init_refuses_an_incomplete_archive(archive, internvl, tmp_path):
    data = tmp_path / "archive"
    shutil.copytree(archive, data)
    (data / "data/vizwiz/vizwiz_val_annotations.json").unlink()
    line = one_line_error(
        "init",
        "--benchmark",
        "dmole",
        "--model",
        str(internvl),
        "--data",
        str(data),
        "--workspace",
        str(tmp_path / "ws"),
    )
    assert "task 'vizwiz'" in line and "vizwiz_val_annotations.json (eval_annotations) does not exist" in line


def test_a_missing_pair_annotation_stops_embed_with_one_line(archive, internvl, tmp_path):
    data = tmp_path / "archive"
    shutil.copytree(archive, data)
    ws = str(tmp_path / "ws")
    dmole(
        "init",
        "--benchmark",
        "dmole",
        "--tasks",
        "vizwiz",
        "--model",
        str(internvl),
        "--data",
        str(data),
        "--workspace",
        ws,
    )
    path = data / "data/vizwiz/vizwiz_val_annotations.json"
    document = json.loads(path.read_text())
    document["annotations"] = [a for a in document["annotations"] if a["question_id"] != 2]
    path.write_text(json.dumps(document))
    line = one_line_error("embed", "--task", "vizwiz", "--workspace", ws)
    assert line.endswith(f"vizwiz_val.jsonl:3: field 'question_id': question 2 has no entry in {path.resolve()}")


@pytest.mark.slow  # 21 s; the archive's reading is test_every_task_reads_the_archive_as_distributed, the CLI loop the
# field presets' (test_mcitlib_presets, test_coin_preset)
def test_the_whole_loop_through_the_cli(internvl, tmp_path):
    """init --benchmark dmole, then embed / fit-router / zc-score / allocate for every task, train-task and
    eval --after for every task, and report: no file edited by hand except the stage overrides for speed."""
    archive = write_official_archive(tmp_path / "archive", per_task=2)  # two samples a split keep it fast
    ws = tmp_path / "ws"
    dmole("init", "--benchmark", "dmole", "--model", str(internvl), "--data", str(archive), "--workspace", str(ws))
    settings = json.loads((ws / "workspace.json").read_text())
    assert [task["name"] for task in settings["tasks"]] == ORDER
    assert settings["tasks"][6]["eval_annotations"] == "data/vizwiz/vizwiz_val_annotations.json"
    (ws / "workspace.json").write_text(json.dumps({**settings, "stages": LOOP_STAGES}))
    for task in ORDER:
        for stage in ("embed", "fit-router", "zc-score", "allocate"):
            dmole(stage, "--task", task, "--workspace", str(ws))
    for task in ORDER:
        dmole("train-task", "--task", task, "--workspace", str(ws))
        dmole("eval", "--after", task, "--workspace", str(ws))
    result = runner.invoke(app, ["report", "--json", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tasks"] == ORDER
    matrix = report["methods"]["dmole"]["matrix"]
    assert len(matrix) == 1 + len(ORDER), "the zero-shot row and one row per stage"
    assert all(value is not None for row in matrix[1:] for value in row), "every task evaluated after every stage"


# --- zc-score scores one view per image -------------------------------------------------------------------


def _zc_scores(ws: Path, *extra: str) -> dict[str, float]:
    import pandas as pd

    from dmole.stages.project import Project

    dmole("zc-score", "--task", "ocrvqa", "--workspace", str(ws), *extra)
    table = pd.read_parquet(Project.open(ws).store.latest("zc-score", "ocrvqa").file("scores.parquet"))
    return dict(zip(table["module"], table["score"]))


def test_zc_score_scores_one_view_per_image_whatever_the_workspace_tiles(archive, internvl, tmp_path):
    """Spec §5: the proxy's inputs are a single image with no tiling, as in the reference, in every workspace."""
    from PIL import Image

    from dmole.stages.project import Project

    data = tmp_path / "archive"
    shutil.copytree(archive, data)
    side = TinySize().image_size
    for sample in load_train_samples(data, _task("ocrvqa")):  # 2:1 images, which tiling cuts into tiles
        Image.open(sample.image).convert("RGB").resize((2 * side, side)).save(sample.image)
    workspaces = {}
    for tiles in (6, 1):
        workspaces[tiles] = tmp_path / f"ws{tiles}"
        dmole(
            "init",
            "--benchmark",
            "dmole",
            "--tasks",
            "ocrvqa",
            "--max-tiles",
            str(tiles),
            "--model",
            str(internvl),
            "--data",
            str(data),
            "--workspace",
            str(workspaces[tiles]),
        )
    image = Image.open(load_train_samples(data, _task("ocrvqa"))[0].image)
    views = {
        tiles: Project.open(ws).load_model().generation_batch([image], ["?"])["pixel_values"].shape[0]
        for tiles, ws in workspaces.items()
    }
    assert views[6] > views[1] == 1  # the workspace's cap does tile these images elsewhere
    one_view = _zc_scores(workspaces[1])
    assert _zc_scores(workspaces[6]) == one_view
    tiled = _zc_scores(workspaces[6], "--max-tiles", "6")  # asked for: the workspace's tiles, other gradients
    assert tiled.keys() == one_view.keys() and tiled != one_view
