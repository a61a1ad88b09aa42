"""dmole general: the base model and a method's model after a task, scored through the lmms-eval plugin on named
lmms-eval tasks (here local tasks over a workspace's test sets, which reproduce `dmole eval`'s scores), stored as a
versioned artifact; the report's "General ability: base against final" section appears only where it exists."""

from __future__ import annotations

import json

import pytest

from dmole.artifacts.io import read_json, read_parquet
from dmole.stages.figures.general import relative
from dmole.stages.registry import EVAL, GENERAL, REPORT

TASKS = {"shape-caption": "probe_caption", "color-vqa": "probe_colour"}  # no dmole task name reaches lmms-eval
TASK = "shape-caption"  # the one task trained (CIDEr-D: above 0 for the micro model, so base and final differ)
SECTION = "## General ability: base against final"


def test_relative_change_is_over_the_base_and_undefined_at_zero():
    assert relative(200.0, 150.0) == pytest.approx(-25.0)
    assert relative(-2.0, -1.0) == pytest.approx(50.0)  # over |base|: a rise stays positive
    assert relative(0.0, 1.0) is None and relative(None, 1.0) is None


def test_the_options_refuse_an_empty_task_name():
    from pydantic import ValidationError

    from dmole.stages.options import GeneralOptions

    assert GeneralOptions(lmms_tasks=["mme", " mme", "pope"]).lmms_tasks == ["mme", "pope"]
    with pytest.raises(ValidationError, match="empty"):
        GeneralOptions(lmms_tasks=[" "])


@pytest.mark.slow
def test_general_scores_base_and_final_as_dmole_eval_and_the_report_adds_its_section(make_project, tmp_path):
    pytest.importorskip("lmms_eval", reason="dmole general runs lmms-eval")
    from dmole.lmms.local_task import write_local_task
    from dmole.stages.data.tasks import load_eval_samples
    from dmole.stages.evaluate import evaluate
    from dmole.stages.general import general
    from dmole.stages.methods import get_method
    from dmole.stages.project import Project
    from dmole.stages.report import report, version_scores
    from dmole.stages.train_task import train_task

    project = make_project()
    settings = json.loads((project.root / "workspace.json").read_text())
    settings["tasks"] = sorted((t for t in settings["tasks"] if t["name"] in TASKS), key=lambda t: t["name"] != TASK)
    for task in settings["tasks"]:  # replies of a few tokens at least (the micro model would often end at once)
        task["min_new_tokens"] = 4
    (project.root / "workspace.json").write_text(json.dumps(settings))
    project = Project.open(project.root)
    train_task(project, TASK, {"method": "seq-lora"})
    zero = evaluate(project, "zero-shot")
    final = evaluate(project, TASK, {"method": "seq-lora"})
    before = report(project).version.file(REPORT.files.markdown).read_text(encoding="utf-8")
    assert SECTION not in before

    folder = tmp_path / "lmms-tasks"
    for task, name in TASKS.items():
        write_local_task(project, task, folder, name=name)
    options = {"method": "seq-lora", "lmms_tasks": list(TASKS.values()), "include_path": str(folder), "batch_size": 3}
    result = general(project, TASK, options)
    assert (result.stage, result.task, result.up_to_date) == (get_method("seq-lora").stage(GENERAL.name), TASK, False)
    saved = read_json(result.version.file(GENERAL.files.result))
    base, last = (saved["models"][name] for name in ("base", "final"))
    # a local task reproduces `dmole eval` (tests/test_lmms_plugin.py): base = row 0, final = seq-lora after TASK
    for model, evaluation in ((base, zero), (last, final)):
        scores = version_scores(evaluation.version)
        got = {task: model["results"][name]["dmole_score,none"] for task, name in TASKS.items()}
        assert got == pytest.approx({task: scores[task] for task in TASKS}, abs=1e-9)
        assert model["samples"] == {
            name: len(load_eval_samples(project.data_root, project.config.task(task))) for task, name in TASKS.items()
        }
    # each document's reply is the one `dmole eval` stored for its sample, and training changed the replies
    replies = {}
    for model, evaluation in (("base", zero), ("final", final)):
        for task, name in TASKS.items():
            stored = read_parquet(result.version.file(GENERAL.files.replies.format(model=model, task=name))).to_pylist()
            predictions = read_parquet(evaluation.version.file(EVAL.files.predictions.format(task=task))).to_pylist()
            assert [r["doc_id"] for r in stored] == list(range(len(predictions)))
            replies[model, task] = [r["reply"] for r in stored]
            assert replies[model, task] == [p["prediction"] for p in predictions]
    assert replies["base", TASK] != replies["final", TASK]
    assert general(project, TASK, options).up_to_date

    after = report(project).version
    text = after.file(REPORT.files.markdown).read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + 1)
    assert text[:start] + text[end + 1 :] == before  # report.md otherwise byte-identical
    assert read_json(after.file(REPORT.files.metrics))["general_ability"]["comparisons"][0]["after"] == TASK

    # the command line: up to date, its table printed; an unknown task is one line, and nothing is written
    from typer.testing import CliRunner

    from dmole.cli.app import app

    args = ["general", "-w", str(project.root), "--after", TASK, "--method", "seq-lora", "--include-path", str(folder)]
    args += ["--batch-size", "3", *(f"--lmms-task={name}" for name in TASKS.values())]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.output and f"seq-lora after {TASK}" in again.output
    assert "| probe_caption | dmole_score ↑ |" in again.output, again.output
    refused = CliRunner().invoke(app, [*args, "--lmms-task", "no_such_task", "--force"])
    assert refused.exit_code == 2 and "lmms-eval has no task 'no_such_task'" in refused.output, refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert project.store.latest(result.stage, TASK).number == result.version.number
