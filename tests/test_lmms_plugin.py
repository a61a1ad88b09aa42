"""The lmms-eval plugin: lmms-eval's own `simple_evaluate`, with ``--model dmole``, on local custom tasks (YAML over
datasets written here from a dmole workspace's test samples), gives the replies and scores of `dmole eval`; the
routers decide each sample from its image and prompt, never from lmms-eval's task name."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="the lmms-eval plugin needs lmms-eval (make install puts it in)")

from artifacts.io import read_parquet  # noqa: E402
from stages.allocate import allocate  # noqa: E402
from stages.data.images import load_image  # noqa: E402
from stages.data.prompts import render_prompt  # noqa: E402
from stages.data.tasks import load_eval_samples  # noqa: E402
from stages.embed import embed  # noqa: E402
from stages.evaluate import evaluate  # noqa: E402
from stages.evaluation.harness import open_model  # noqa: E402
from stages.fit_router import fit_router  # noqa: E402
from stages.init import create_workspace  # noqa: E402
from stages.project import Project  # noqa: E402
from stages.train_task import train_task  # noqa: E402
from stages.zc_score import zc_score  # noqa: E402

from conftest import MICRO_STAGES  # noqa: E402

TASKS = ("color-vqa", "shape-choice")
PROBE = Path(__file__).parent / "lmms_task" / "probe_utils.py"


@pytest.fixture(scope="module")
def trained(micro_bench, tmp_path_factory) -> Project:
    """D-MoLE over two tasks, evaluated after the second (every sample routed by the routers)."""
    root = tmp_path_factory.mktemp("lmms") / "ws"
    create_workspace(root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=list(TASKS),
                     stages=MICRO_STAGES)
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


def write_lmms_task(project: Project, task_name: str, folder: Path, lmms_name: str) -> None:
    """A local lmms-eval task over a save_to_disk dataset of ``task_name``'s test samples (lmms-eval's YAML form)."""
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    task = project.config.task(task_name)
    samples = load_eval_samples(project.data_root, task)
    images = []
    for sample in samples:
        buffer = io.BytesIO()
        load_image(sample.image).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    rows = {"image": images, "sample_id": [s.id for s in samples], "family": [task.family] * len(samples),
            "prompt": [render_prompt(task, s) for s in samples],
            "references": [json.dumps(s.references) for s in samples]}
    data = folder / f"{lmms_name}-data"
    DatasetDict(test=Dataset.from_dict(rows).cast_column("image", ImageFeature())).save_to_disk(str(data))
    max_new, min_new = task.generation_limits
    (folder / f"{lmms_name}.yaml").write_text(f"""task: {lmms_name}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function probe_utils.doc_to_visual
doc_to_text: !function probe_utils.doc_to_text
doc_to_target: sample_id
generation_kwargs:
  max_new_tokens: {max_new}
  min_new_tokens: {min_new}
process_results: !function probe_utils.process_results
metric_list:
  - metric: dmole_score
    aggregation: !function probe_utils.aggregate
    higher_is_better: true
""")


NAMES = {"color-vqa": "probe_colour", "shape-choice": "probe_shape"}  # no dmole task name reaches lmms-eval


@pytest.fixture(scope="module")
def lmms_tasks(trained, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lmms-tasks")
    shutil.copy(PROBE, folder / PROBE.name)
    for task, lmms_name in NAMES.items():
        write_lmms_task(trained, task, folder, lmms_name)
    return folder


def simple_evaluate(model_args: str, folder: Path) -> dict:
    """lmms-eval's own entry point, with the model named as on its command line (``--model dmole``)."""
    from lmms_eval.evaluator import simple_evaluate as evaluate_with_lmms
    from lmms_eval.tasks import TaskManager

    return evaluate_with_lmms(model="dmole", model_args=model_args, tasks=list(NAMES.values()), batch_size=3,
                              log_samples=True, task_manager=TaskManager(include_path=str(folder),
                                                                         include_defaults=False))


def test_simple_evaluate_with_the_dmole_model_gives_dmole_evals_replies_and_scores(trained, lmms_tasks):
    from lmms_eval.models import get_model

    from dmole_lmms.model import DMoLEModel

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
    from artifacts.io import read_json
    from stages.evaluation.predict import predict
    from stages.roe.evaluation import TrainedRoE
    from stages.roe.inference import RequestRecorder
    from stages.roe_eval import evaluate_roe
    from stages.route_train import route_train

    evaluate(trained, TASKS[0])  # the continual matrix's diagonal, which RoE on a continual model reports against
    route_train(trained, {"start": TASKS[-1], "epochs": 1, "batch_size": 4, "roe_lr": 5e-2, "skip_ratio": 0.8,
                          "stage2_mode": "frozen", "max_eval_samples": 1})
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
            report["per_task"][task]["roe_score"], abs=1e-9)
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


@pytest.mark.parametrize("args, expected", [
    ({}, "say which model: after=TASK"),
    ({"after": "nope"}, "unknown task 'nope'"),
    ({"after": TASKS[0], "top": 0}, "top"),
    ({"roe": True, "after": TASKS[0]}, "takes no after or method"),
])
def test_a_wrong_model_argument_is_one_user_error(trained, args, expected):
    from artifacts import ArtifactError
    from stages.errors import UserError

    options = {k: v for k, v in args.items() if k not in ("after", "roe")}
    with pytest.raises((UserError, ArtifactError), match=expected):
        open_model(trained, args.get("after"), roe=args.get("roe", False), options=options)


def test_a_request_is_one_image_and_its_prompt_and_a_reply_stops_at_the_tasks_stop_strings():
    from PIL import Image

    from dmole_lmms.model import _cut, _one_image, _prompt
    from stages.errors import UserError

    image = Image.new("L", (4, 4))
    assert _one_image([image], "mme", 3).mode == "RGB"
    with pytest.raises(UserError, match="task 'mme', document 3: dmole takes one image per sample, got 2"):
        _one_image([image, image], "mme", 3)
    assert _prompt("<image>\nIs it red?") == "Is it red?"
    assert _cut("yes\n\nbecause", ("\n\n",)) == "yes" and _cut("yes", ()) == "yes"
