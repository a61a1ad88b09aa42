"""The lmms-eval plugin: lmms-eval's own `simple_evaluate`, with ``--model dmole``, on local custom tasks (YAML over
datasets written here from a dmole workspace's test samples), gives the replies and scores of `dmole eval`; the
routers decide each sample from its image and prompt, never from lmms-eval's task name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="the lmms-eval plugin needs lmms-eval (make install puts it in)")

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_parquet
from dmole.lmms.local_task import main as local_task
from dmole.lmms.model import DMoLEModel
from dmole.stages.allocate import allocate
from dmole.stages.data.images import load_image
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples
from dmole.stages.embed import embed
from dmole.stages.errors import UserError
from dmole.stages.evaluate import evaluate
from dmole.stages.fit_router import fit_router
from dmole.stages.harness import open_model
from dmole.stages.init import create_workspace
from dmole.stages.project import Project
from dmole.stages.train_task import train_task
from dmole.stages.zc_score import zc_score

TASKS = ("color-vqa", "shape-choice")


@pytest.fixture(scope="module")
def trained(micro_bench, tmp_path_factory) -> Project:
    """D-MoLE over two tasks, evaluated after the second (every sample routed by the routers); its model and
    data lie beside it (relative paths), so the folder above it can be moved."""
    bench = tmp_path_factory.mktemp("lmms")
    for folder in ("base-model", "data"):
        shutil.copytree(micro_bench / folder, bench / folder)
    root = bench / "ws"
    create_workspace(root, model=bench / "base-model", data=bench / "data", tasks=list(TASKS), stages=MICRO_STAGES)
    settings = json.loads((root / "workspace.json").read_text())
    for task in settings["tasks"]:  # replies of a few tokens at least (the micro model would often end at once)
        task["min_new_tokens"] = 4
    (root / "workspace.json").write_text(json.dumps(settings))
    project = Project.open(root)
    for task in TASKS:
        for stage in (embed, fit_router, zc_score, allocate, train_task):
            stage(project, task)
    evaluate(project, TASKS[-1])
    return project


def eval_rows(project: Project, task: str) -> tuple[dict, float]:
    """`dmole eval`'s predictions (by sample id), routes and score for ``task`` after the last task."""
    version = project.store.latest("eval", TASKS[-1])
    predictions = read_parquet(version.file(f"predictions/{task}.parquet")).to_pylist()
    score = next(r["score"] for r in read_parquet(version.file("scores.parquet")).to_pylist() if r["task"] == task)
    return {r["sample_id"]: r for r in predictions}, score


NAMES = {"color-vqa": "probe_colour", "shape-choice": "probe_shape"}  # no dmole task name reaches lmms-eval


@pytest.fixture(scope="module")
def lmms_tasks(trained, tmp_path_factory) -> Path:
    """The README's local tasks (`python -m dmole.lmms.local_task`), under names that are not dmole's."""
    folder = tmp_path_factory.mktemp("lmms-tasks")
    for task, lmms_name in NAMES.items():
        assert (
            local_task(["--workspace", str(trained.root), "--task", task, "--out", str(folder), "--name", lmms_name])
            == 0
        )
    return folder


def test_the_local_task_command_names_a_task_after_dmoles_and_a_wrong_task_is_one_line(trained, tmp_path, capsys):
    assert local_task(["--workspace", str(trained.root), "--task", TASKS[0], "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dmole_color_vqa.yaml").is_file() and (tmp_path / "dmole_color_vqa-data").is_dir()
    capsys.readouterr()
    assert local_task(["--workspace", str(trained.root), "--task", "nope", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: unknown task 'nope'") and error.count("\n") == 1


def simple_evaluate(model_args: str, folder: Path) -> dict:
    """lmms-eval's own entry point, with the model named as on its command line (``--model dmole``)."""
    from lmms_eval.evaluator import simple_evaluate as evaluate_with_lmms
    from lmms_eval.tasks import TaskManager

    return evaluate_with_lmms(
        model="dmole",
        model_args=model_args,
        tasks=list(NAMES.values()),
        batch_size=3,
        log_samples=True,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
    )


def test_simple_evaluate_with_the_dmole_model_gives_dmole_evals_replies_and_scores(trained, lmms_tasks):
    from lmms_eval.models import get_model

    from dmole.lmms.model import DMoLEModel

    assert get_model("dmole") is DMoLEModel  # registered through the lmms_eval.models entry point
    results = simple_evaluate(f"workspace={trained.root},after={TASKS[-1]},method=dmole", lmms_tasks)
    for task, lmms_name in NAMES.items():
        expected, score = eval_rows(trained, task)
        replies = {s["doc"]["sample_id"]: s["resps"][0][0] for s in results["samples"][lmms_name]}
        assert replies == {sample_id: row["prediction"] for sample_id, row in expected.items()}
        assert results["results"][lmms_name]["dmole_score,none"] == pytest.approx(score, abs=1e-9)


def test_roe_true_gives_the_replies_and_scores_of_eval_roe(trained, lmms_tasks):
    """RoE trained on D-MoLE's model after the last task: its experts routed per sample from the inputs, RoE
    routing the layers on top."""
    from dmole.artifacts.io import read_json
    from dmole.stages.evaluation.predict import predict
    from dmole.stages.roe.evaluation import TrainedRoE
    from dmole.stages.roe.inference import RequestRecorder
    from dmole.stages.roe_eval import evaluate_roe
    from dmole.stages.route_train import route_train

    evaluate(trained, TASKS[0])  # the continual matrix's diagonal, which RoE on a continual model reports against
    route_train(
        trained,
        {
            "start": TASKS[-1],
            "epochs": 1,
            "batch_size": 4,
            "roe_lr": 5e-2,
            "skip_ratio": 0.8,
            "stage2_mode": "frozen",
            "max_eval_samples": 1,
        },
    )
    report = read_json(evaluate_roe(trained, {"batch_size": 3}).version.file("roe_report.json"))
    assert report["skip_rate"] > 0
    roe = TrainedRoE.latest(trained)
    adapter, _, continual = roe.routed_model(trained)
    results = simple_evaluate(f"workspace={trained.root},roe=true", lmms_tasks)
    changed = 0
    for task, lmms_name in NAMES.items():
        spec = trained.config.task(task)
        samples = load_eval_samples(trained.data_root, spec)
        # roe-eval's generation: the experts of each sample's cached route, RoE's plan per batch
        routes = continual.routes(task, samples, "test")
        recorder = RequestRecorder(roe.config["batch_rule"], experts=(continual.batches(routes), continual.rows))
        expected = predict(adapter, spec, samples, batch_size=3, model=continual.plan.model, around_batch=recorder)
        replies = {s["doc"]["sample_id"]: s["resps"][0][0] for s in results["samples"][lmms_name]}
        assert [replies[s.id] for s in samples] == expected
        assert results["results"][lmms_name]["dmole_score,none"] == pytest.approx(
            report["per_task"][task]["roe_score"], abs=1e-9
        )
        dmole_replies, _ = eval_rows(trained, task)  # the same experts without RoE
        changed += sum(reply != dmole_replies[s.id]["prediction"] for s, reply in zip(samples, expected))
    assert changed > 0  # the skipped layers change replies: the plugin ran RoE, not only the experts


def test_the_harness_routes_each_sample_as_eval_does_from_its_inputs_alone(trained):
    model = open_model(trained, TASKS[-1], options={"batch_size": 3})
    routed = {}
    for task in TASKS:
        spec = trained.config.task(task)
        samples = load_eval_samples(trained.data_root, spec)
        expected, _ = eval_rows(trained, task)
        routes = model.route([load_image(s.image) for s in samples], [render_prompt(spec, s) for s in samples])
        assert [list(r) for r in routes] == [list(expected[s.id]["routed_tasks"]) for s in samples]
        routed[task] = routes
    # not a constant route: the routers send samples of the two tasks to the two tasks' experts
    assert any(1 in r for r in routed["color-vqa"]) and any(2 in r for r in routed["shape-choice"])
    assert routed["color-vqa"] != routed["shape-choice"]


@pytest.mark.parametrize(
    "args, expected",
    [
        ({}, "say which model: after=TASK"),
        ({"after": "nope"}, "unknown task 'nope'"),
        ({"after": TASKS[0], "top": 0}, "top"),
        ({"roe": True, "after": TASKS[0]}, "takes no after or method"),
    ],
)
def test_a_wrong_model_argument_is_one_user_error(trained, args, expected):
    from dmole.artifacts import ArtifactError
    from dmole.stages.errors import UserError

    options = {k: v for k, v in args.items() if k not in ("after", "roe")}
    with pytest.raises((UserError, ArtifactError), match=expected):
        open_model(trained, args.get("after"), roe=args.get("roe", False), options=options)


def test_a_request_is_one_image_and_its_prompt_and_a_reply_stops_at_the_tasks_stop_strings():
    from PIL import Image

    from dmole.lmms.model import _cut, _one_image, _prompt
    from dmole.stages.errors import UserError

    image = Image.new("L", (4, 4))
    assert _one_image([image], "mme", 3).mode == "RGB"
    with pytest.raises(UserError, match="task 'mme', document 3: dmole takes one image per sample, got 2"):
        _one_image([image, image], "mme", 3)
    assert _prompt("<image>\nIs it red?") == "Is it red?"
    assert _cut("yes\n\nbecause", ("\n\n",)) == "yes" and _cut("yes", ()) == "yes"


def lmms_eval_command(model_args: str, folder: Path, cwd: Path, out: Path) -> dict:
    """The real `lmms-eval` command line as a user types it (`--batch_size auto`), in a subprocess: its scores."""
    command = [
        str(Path(sys.executable).parent / "lmms-eval"),
        "--model",
        "dmole",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(NAMES.values()),
        "--include_path",
        str(folder),
        "--batch_size",
        "auto",
        "--output_path",
        str(out),
    ]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0 and "Error during evaluation" not in done.stderr + done.stdout, done.stderr[-3000:]
    [results] = out.rglob("*_results.json")
    scores = json.loads(results.read_text())["results"]
    return {lmms_name: scores[lmms_name]["dmole_score,none"] for lmms_name in NAMES.values()}


def test_the_readme_recipe_through_the_lmms_eval_command_gives_dmole_evals_scores(trained, lmms_tasks, tmp_path):
    scores = lmms_eval_command(f"workspace={trained.root},after={TASKS[-1]}", lmms_tasks, tmp_path, tmp_path / "out")
    for task, lmms_name in NAMES.items():
        assert scores[lmms_name] == pytest.approx(eval_rows(trained, task)[1], abs=1e-9)


def test_a_copied_workspace_reached_by_any_path_evaluates_alike_and_a_swapped_model_is_refused(
    trained, lmms_tasks, tmp_path, monkeypatch
):
    """The workspace with its model and data (relative paths) copied elsewhere: `dmole eval` (recomputed), lmms-eval's
    simple_evaluate (an absolute path) and its command line (a relative path from another folder) give the
    original's scores; its model replaced by another family's, the plugin refuses in one line."""
    from typer.testing import CliRunner

    from dmole.cli.app import app
    from dmole.stages.models.tiny import build_tiny

    copy = tmp_path / "elsewhere" / "bench"
    shutil.copytree(trained.root.parent, copy)
    workspace = copy / trained.root.name
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = Path("bench") / trained.root.name
    done = CliRunner().invoke(app, ["eval", "--after", TASKS[-1], "--force", "--workspace", str(relative)])
    assert done.exit_code == 0, done.output
    moved = Project.open(workspace)
    expected = {task: eval_rows(trained, task)[1] for task in TASKS}
    assert {task: eval_rows(moved, task)[1] for task in TASKS} == pytest.approx(expected, abs=1e-9)
    results = simple_evaluate(f"workspace={workspace},after={TASKS[-1]}", lmms_tasks)
    command = lmms_eval_command(
        f"workspace={relative},after={TASKS[-1]}", lmms_tasks, tmp_path / "elsewhere", tmp_path / "out"
    )
    for task, lmms_name in NAMES.items():
        assert results["results"][lmms_name]["dmole_score,none"] == pytest.approx(expected[task], abs=1e-9)
        assert command[lmms_name] == pytest.approx(expected[task], abs=1e-9)

    shutil.rmtree(copy / "base-model")
    build_tiny("qwen2vl", copy / "base-model", seed=1)
    done = CliRunner().invoke(app, ["eval", "--after", TASKS[-1], "--workspace", str(workspace)])
    assert done.exit_code == 2 and done.output.count("\n") == 1 and "was built on another model" in done.output
    with pytest.raises(UserError, match=r"^dmole model: .* was built on another model than the workspace's model now"):
        DMoLEModel.create_from_arg_string(f"workspace={workspace},after={TASKS[-1]}")
    statuses = {
        r["status"] for r in json.loads(CliRunner().invoke(app, ["ls", "--json", "--workspace", str(workspace)]).output)
    }
    assert statuses == {"stale"}


VALID = "--model_args takes workspace, after, method, roe, "


@pytest.mark.parametrize(
    "args, expected",
    [
        ("", "say which workspace: workspace=PATH"),
        ("workspace={ws},after=shape-choice,treshold_scale=0.5", "unknown model_args treshold_scale"),
        ("workspace={ws},after=nope", "unknown task 'nope'"),
        ("workspace={ws}/missing,after=shape-choice", "no workspace at"),
    ],
)
def test_a_wrong_model_arg_is_one_line_naming_the_valid_ones(trained, args, expected):
    with pytest.raises(UserError) as caught:
        DMoLEModel.create_from_arg_string(args.format(ws=trained.root), {"batch_size": "auto"})
    message = str(caught.value)
    assert expected in message and VALID in message and "threshold_scale" in message and "\n" not in message


def test_batch_size_auto_is_the_eval_stages_batch_size(trained):
    assert (
        DMoLEModel.create_from_arg_string(
            f"workspace={trained.root},after={TASKS[-1]}", {"batch_size": "auto"}
        ).batch_size
        == MICRO_STAGES["eval"]["batch_size"]
    )
    assert (
        DMoLEModel.create_from_arg_string(f"workspace={trained.root},after=zero-shot", {"batch_size": 2}).batch_size
        == 2
    )
