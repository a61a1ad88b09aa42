"""RoE's warm start (`--warm-start`): the runs start from the dense twin, the base fine-tuned on the tasks with every
layer executed, as the paper trains RoE on a model already tuned on its data. The twin is trained once per
checkpoint folder and its tensors are what a warm-started model holds; the dense reference is the twin trained on
for the same steps; route-sweep's baselines start there too and static dropping ranks the twin's layers."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from dmole.stages.options import RouteTrainOptions
from dmole.stages.roe import recipe
from dmole.stages.roe.backbone import llm_parameters
from dmole.stages.roe.evaluation import eval_sets, evaluate_dense
from dmole.stages.roe.fixed import least_change_layers
from dmole.stages.roe.prior import measure_change
from dmole.stages.route_sweep import route_sweep
from dmole.stages.route_train import _resolved, route_train, training_subset
from tiny_sizes import small_lm, tiny_roe_project

SIZE = small_lm()
OPTIONS = dict(
    epochs=1,
    batch_size=4,
    roe_lr=1e-2,
    backbone_lr=1e-2,
    eval_batch_size=4,
    max_eval_samples=2,
    stage2_mode="full",
    stage2_start=0.0,
    stage1_start=0.0,
    warm_start=True,
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_roe_project(tmp_path_factory.mktemp("roe-warm"), SIZE, OPTIONS)


def _llm(adapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in llm_parameters(adapter)}


def test_a_warm_started_model_holds_the_dense_twin_trained_once(project, tmp_path, monkeypatch):
    settings = RouteTrainOptions(**OPTIONS)
    samples = [s for _, s in training_subset(project, project.config.tasks, settings, 0)]
    sets = eval_sets(project, settings.max_eval_samples)
    loop = recipe.loop_settings(settings, 7, 0)
    folder = recipe.warm_start(project, samples, sets, settings, loop, checkpoint_dir=tmp_path)

    # independently: the twin's training from the base, as the dense twin trains
    twin, _ = recipe.load_for_training(project, settings)
    base = _llm(twin)
    recipe.train_roe(twin, None, samples, settings, loop)
    warm, _ = recipe.load_for_training(project, settings, folder)
    expected, loaded = _llm(twin), _llm(warm)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[n], expected[n]) for n in expected)
    assert any(not torch.equal(loaded[n], base[n]) for n in base)  # the twin moved away from the base
    cold = json.loads((tmp_path / recipe.COLD_SCORES).read_text())
    assert cold == evaluate_dense(twin, sets, settings.eval_batch_size)  # the twin's own scores, kept beside it

    def trains(*_args, **_kwargs):
        raise AssertionError("the twin was trained again")

    monkeypatch.setattr(recipe, "train_roe", trains)
    assert recipe.warm_start(project, samples, sets, settings, loop, checkpoint_dir=tmp_path) == folder
    assert not (tmp_path / f"{recipe.WARM}.partial").exists()


def test_route_sweep_from_the_twin_starts_every_run_and_the_static_ranking_there(project):
    options = {
        "skip_ratios": [0.3],
        "seeds": [0],
        "speed_prompts": 0,
        "change_samples": 8,
        "baselines": ["static"],
    }
    version = route_sweep(project, options).version
    sweep = json.loads(version.file("sweep.json").read_text())
    assert sweep["dense_reference"] == "dense twin, warm start"
    twin_dir = next(project.root.glob(".runs/roe-sweep/twin/*/seed-0"))
    warm_scores = json.loads((twin_dir / recipe.WARM_SCORES).read_text())
    cold_scores = json.loads((twin_dir / recipe.COLD_SCORES).read_text())
    assert sweep["dense"]["0"] == warm_scores  # the reference: the twin trained on, not the twin itself

    settings = RouteTrainOptions(**OPTIONS)
    warm, _ = recipe.load_for_training(project, settings, twin_dir / recipe.WARM)
    samples = [s for _, s in training_subset(project, project.config.tasks, settings, project.config.seed)]
    change = measure_change(warm, samples, 8, project.config.seed, settings.eval_batch_size)
    assert sweep["layer_change"]["0"] == pytest.approx(change)
    assert evaluate_dense(warm, eval_sets(project, 2), 4) == cold_scores
    static = next(r for r in sweep["runs"] if r["variant"] == "static")
    roe = next(r for r in sweep["runs"] if r["variant"] == "roe")
    k = round(roe["skip_rate"] * len(sweep["routable"]))
    assert static["routing"]["layers"] == list(least_change_layers(change, sweep["routable"], k))


def test_warm_start_needs_a_tuned_backbone_and_is_moot_from_a_continual_model(project):
    with pytest.raises(ValidationError, match="with stage2_mode frozen there is none"):
        RouteTrainOptions(**OPTIONS | {"stage2_mode": "frozen"})
    from dmole.cli.app import app

    refused = CliRunner().invoke(app, ["route-train", "--stage2-mode", "frozen", "-w", str(project.root)])
    assert refused.exit_code == 2
    assert "add --no-warm-start" in refused.output and "Traceback" not in refused.output
    # from a continual model (frozen by default there) the option does not apply, and stays out of the config
    resolved, after = _resolved(project, RouteTrainOptions(**OPTIONS | {"start": "color-vqa", "stage2_mode": None}))
    assert after == "color-vqa" and resolved.stage2_mode == "frozen" and not resolved.warm_start


def test_route_train_from_the_twin_reports_against_the_twin_trained_on(project, tmp_path):
    report = json.loads(route_train(project).version.file("roe_report.json").read_text())
    assert report["dense_reference"] == "dense twin"

    # independently: the twin (what RoE starts from, its "base" scores) and the twin trained on (the reference)
    settings = RouteTrainOptions(**OPTIONS)
    samples = [s for _, s in training_subset(project, project.config.tasks, settings, project.config.seed)]
    sets = eval_sets(project, settings.max_eval_samples)
    loop = recipe.loop_settings(settings, project.config.seed, 0)
    folder = recipe.warm_start(project, samples, sets, settings, loop, checkpoint_dir=tmp_path)
    start = json.loads((tmp_path / recipe.COLD_SCORES).read_text())
    dense = recipe.dense_twin_scores(project, samples, sets, settings, loop, checkpoint_dir=tmp_path, warm=folder)
    for task, row in report["per_task"].items():
        assert row["base_score"] == start[task], task
        assert row["dense_score"] == dense[task], task
        assert row["relative"] == (row["roe_score"] / dense[task] if dense[task] else None)
