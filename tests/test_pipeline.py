"""End to end on the micro benchmark: the stages, the demo loop, the CLI shell loop and PEFT compatibility."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_json, read_parquet
from dmole.cli.app import app
from dmole.stages.demo import run_pipeline
from dmole.stages.dmole.bank import load_router
from dmole.stages.embed import embed
from dmole.stages.evaluate import evaluate
from dmole.stages.fit_router import fit_router, routing_confusion
from dmole.stages.options import EmbedOptions, EvalOptions
from dmole.stages.registry import FIT_ROUTER
from dmole.stages.resolve import stage_options

runner = CliRunner()


def cli(project, *args):
    result = runner.invoke(app, [*args, "--workspace", str(project.root)])
    assert result.exit_code == 0, result.output
    return result.output


def test_embed_then_fit_router_and_rerun_is_up_to_date(make_project):
    project = make_project()
    task = project.config.task_names[0]
    first = embed(project, task)
    table = read_parquet(first.version.file("train.parquet"))
    assert table.column_names == ["sample_id", "task", "split", "embedding"]
    assert table.num_rows == 12 and table.schema.field("embedding").type.list_size == 64 + 128
    options = stage_options(project.config, "fit-router")
    fitted = fit_router(project, task, options)
    record = read_json(fitted.version.file("router.json"))
    assert record["quantile"] == 0.99 and record["threshold"] == record["quantiles"]["q99"]
    assert fitted.version.manifest["inputs"][0]["stage"] == "embed"
    assert embed(project, task).up_to_date and fit_router(project, task, options).up_to_date
    confusion = routing_confusion(project)
    assert sum(confusion[task].values()) == 4 and set(confusion[task]) == {task, "none"}
    # loading a router gives its stored weights and draws nothing from torch's generator: train-task loads the
    # routers after seeding its experts' random draws
    torch.manual_seed(0)
    model, _ = load_router(fitted.version)
    after = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(4))
    stored = load_file(fitted.version.file(FIT_ROUTER.files.weights))
    assert stored.keys() == model.state_dict().keys()
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_demo_loop_and_cli_shell_loop_give_the_same_report(make_project):
    methods = ("dmole", "seq-lora", "finetune")  # the demo's and the oracle, whose BWT and FWT are known
    project = make_project("demo")
    report = run_pipeline(project, methods)
    metrics = read_json(report.version.file("cl_metrics.json"))
    assert set(metrics["methods"]) == {"zero-shot", *methods}
    dmole = metrics["methods"]["dmole"]
    assert len(dmole["matrix"]) == 6 and all(v is not None for row in dmole["matrix"] for v in row)
    finetune = metrics["methods"]["finetune"]
    assert finetune["bwt"] == 0 and finetune["fwt"] == 0  # oracle routing: nothing forgotten, no transfer

    shell = make_project("shell")
    for task in cli(shell, "tasks").split():
        for stage in ("embed", "fit-router", "zc-score", "allocate"):
            cli(shell, stage, "--task", task)
    cli(shell, "eval", "--zero-shot")
    for method in methods:
        for task in shell.config.task_names:
            cli(shell, "train-task", "--task", task, "--method", method, "-q")
            cli(shell, "eval", "--after", task, "--method", method, "-q")
    printed = json.loads(cli(shell, "report", "--json"))
    for method, values in metrics["methods"].items():
        for key in ("last", "avg_seen", "avg_all", "bwt", "fwt", "matrix"):
            assert printed["methods"][method][key] == values[key], (method, key)
    assert "up to date" in cli(shell, "train-task", "--task", shell.config.task_names[0])


@pytest.mark.slow  # 15 s; PeftModel.from_pretrained on D-MoLE's expert folders: test_dora, test_qkv_group (faster)
def test_each_expert_loads_with_peft_alone_and_reproduces_the_toolkit(make_project):
    from peft import PeftModel

    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.methods import get_method
    from dmole.stages.methods.lora import expert_folder, expert_model
    from dmole.stages.models.registry import load_family
    from dmole.stages.training.chat import chat_examples

    project = make_project("peft")
    run_pipeline(project, methods=("dmole",))
    names = project.config.task_names
    toolkit_adapter = load_family(project.model_path)
    dmole = get_method("dmole")
    experts = expert_model(
        project, toolkit_adapter, loaded={i: dmole.trained(project, n) for i, n in enumerate(names, start=1)}
    )
    for task_id, name in enumerate(names, start=1):
        samples = load_train_samples(project.data_root, project.config.task(name))[:3]
        batch = toolkit_adapter.train_batch(chat_examples(samples))
        with torch.no_grad(), experts.routed([(task_id,)] * len(samples)):
            ours = experts.model(**batch).logits
        alone = load_family(project.model_path)
        peft_model = PeftModel.from_pretrained(alone.model, expert_folder(dmole.trained(project, name))).eval()
        with torch.no_grad():
            theirs = peft_model(**batch).logits
        assert torch.allclose(ours, theirs, atol=1e-5), name
        config = json.loads((expert_folder(dmole.trained(project, name)) / "adapter_config.json").read_text())
        arch = read_json(project.store.latest("allocate", name).file("arch.json"))
        assert sorted(config["target_modules"]) == arch["selected"] and config["r"] == 8


@pytest.fixture(scope="module")
def dmole_run(micro_bench, tmp_path_factory):
    """A workspace where D-MoLE has learnt every micro task and been evaluated after each."""
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    root = tmp_path_factory.mktemp("dmole-run") / "ws"
    create_workspace(root, model=micro_bench / "base-model", data=micro_bench / "data", stages=MICRO_STAGES)
    project = Project.open(root)
    run_pipeline(project, methods=("dmole",))
    return project


def test_eval_predictions_do_not_depend_on_batch_size(dmole_run):
    project = dmole_run
    after = project.config.task_names[-1]
    one = evaluate(project, after, EvalOptions(batch_size=1))
    eight = evaluate(project, after, EvalOptions(batch_size=8))
    for task in project.config.task_names:
        a = read_parquet(one.version.file(f"predictions/{task}.parquet")).to_pydict()
        b = read_parquet(eight.version.file(f"predictions/{task}.parquet")).to_pydict()
        assert a["prediction"] == b["prediction"] and a["routed_tasks"] == b["routed_tasks"], task


@pytest.mark.parametrize("family", ["internvl", "qwen2vl"])
def test_other_families_embed_and_train(tmp_path, family):
    from dmole.stages.allocate import allocate
    from dmole.stages.data.synthetic import SynthSizes
    from dmole.stages.options import TrainTaskOptions
    from dmole.stages.pretrain import PretrainSettings
    from dmole.stages.project import Project
    from dmole.stages.synth import synthesize
    from dmole.stages.train_task import train_task
    from dmole.stages.zc_score import zc_score

    out = synthesize(
        tmp_path / family,
        family=family,
        sizes=SynthSizes(train_per_task=8, test_per_task=2, pretrain_samples=8, vision_samples=8),
        pretraining=PretrainSettings(vision_epochs=1, epochs=1, batch_size=8),
    )
    project = Project.open(out.workspace)
    task = project.config.task_names[0]
    assert embed(project, task, EmbedOptions(batch_size=4)).version.manifest["summary"]["family"] == family
    zc_score(project, task)
    arch = read_json(allocate(project, task).version.file("arch.json"))
    assert arch["n_vision"] >= (arch["n_vision"] + arch["n_language"]) // 4  # the vision floor
    trained = train_task(project, task, TrainTaskOptions(epochs=1, batch_size=4))
    assert trained.version.manifest["summary"]["trainable_parameters"] == arch["expert_parameters"]


def test_a_trained_short_answer_task_stops_by_itself(micro_bench, tmp_path):
    """Labels end with the end-of-turn token, so generation ends near the answer's length, far short of a
    generous max_new_tokens."""
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    limit = 48
    root = tmp_path / "stops"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=["opposite-short"],
        stages={**MICRO_STAGES, "train-task": {**MICRO_STAGES["train-task"], "epochs": 30, "lr": 1e-2}},
    )
    settings = json.loads((root / "workspace.json").read_text())
    settings["tasks"][0]["max_new_tokens"] = limit
    (root / "workspace.json").write_text(json.dumps(settings))
    project = Project.open(root)
    run_pipeline(project, methods=("dmole",))
    predictions = read_parquet(
        project.store.latest("eval", "opposite-short").file("predictions/opposite-short.parquet")
    ).to_pydict()
    generated = sorted(len(p.encode()) for p in predictions["prediction"])  # byte tokenizer: one token a byte
    answers = sorted(len(json.loads(r)["answer"][0].encode()) for r in predictions["references"])
    median = generated[len(generated) // 2]
    assert 1 <= median <= 2 * answers[len(answers) // 2] + 2 < limit, (predictions["prediction"], answers)


def test_a_router_that_rejects_its_own_test_samples_is_a_warning(micro_bench, tmp_path):
    """A task whose own router accepts few of its test samples would silently run them without experts;
    fit-router and eval say so in one line each (here the threshold is made far too tight)."""
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    root = tmp_path / "health"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=["color-vqa", "opposite-short"],
        stages=MICRO_STAGES,
    )
    project = Project.open(root)
    tight = cli(project, "embed", "--task", "color-vqa") and cli(
        project, "fit-router", "--task", "color-vqa", "--quantile", "0.01"
    )
    assert "warning: fit-router: task 'color-vqa'" in tight and "--quantile" in tight
    cli(project, "embed", "--task", "opposite-short")
    assert "warning" not in cli(project, "fit-router", "--task", "opposite-short")
    for task in project.config.task_names:
        cli(project, "zc-score", "--task", task)
        cli(project, "allocate", "--task", task)
    cli(project, "train-task", "--task", "color-vqa")
    printed = cli(project, "eval", "--after", "color-vqa")
    assert printed.count("warning:") == 1 and "eval after color-vqa: task 'color-vqa'" in printed
    again = cli(project, "eval", "--after", "color-vqa")
    assert "up to date" in again and "warning: eval after color-vqa" in again
    cli(project, "eval", "--zero-shot")
    reported = cli(project, "report")
    assert "warning: eval after color-vqa" in reported
    markdown = project.store.latest("report", "all").file("report.md").read_text()
    assert "## Routing health" in markdown and "task 'color-vqa'" in markdown


def test_threshold_sweep_reproduces_eval_at_factor_one_and_feeds_the_report(make_project):
    project = make_project("sweep")
    run_pipeline(project, methods=("dmole",))
    last = project.config.task_names[-1]
    cli(project, "eval", "--after", last, "--threshold-scales", "2,0.25,1")
    sweep = project.store.latest("threshold-sweep", last)
    rows = read_parquet(sweep.file("sweep.parquet")).to_pylist()
    assert sorted({r["scale"] for r in rows}) == [0.25, 1.0, 2.0]
    evaluated = {
        r["task"]: r["score"]
        for r in read_parquet(project.store.latest("eval", last).file("scores.parquet")).to_pylist()
    }
    assert {r["task"]: r["score"] for r in rows if r["scale"] == 1.0} == evaluated
    unrouted = [sum(r["experts_0"] for r in rows if r["scale"] == s) for s in (0.25, 1.0, 2.0)]
    assert unrouted[0] >= unrouted[1] >= unrouted[2]
    assert sweep.manifest["summary"]["avg_last@1"] == pytest.approx(sum(evaluated.values()) / len(evaluated), abs=1e-3)
    cli(project, "report")
    report = project.store.latest("report", "all")
    assert "## Threshold sensitivity (D-MoLE)" in report.file("report.md").read_text()
    assert report.file("thresholds.png").read_bytes()[:4] == b"\x89PNG"
    failed = runner.invoke(
        app, ["eval", "--after", last, "--threshold-scales", "1,x", "--workspace", str(project.root)]
    )
    assert failed.exit_code == 2 and "comma-separated numbers" in failed.output


@pytest.mark.slow
def test_ablations_run_as_named_methods_beside_dmole(make_project):
    project = make_project("ablations")
    ablations = ("dmole-vision-only", "dmole-uniform")
    report = run_pipeline(project, methods=("dmole", *ablations))
    names = project.config.task_names
    for method, rule in zip(ablations, ("vision-only", "uniform")):
        arches = [read_json(project.store.latest(f"{method}.allocate", n).file("arch.json")) for n in names]
        assert {a["rule"] for a in arches} == {rule}
        assert project.store.latest(f"{method}.allocate", names[0]).manifest["summary"]["rule"] == rule
        expert = json.loads(
            (
                project.store.latest(f"{method}.train-task", names[-1]).path / "expert" / "adapter_config.json"
            ).read_text()
        )
        assert sorted(expert["target_modules"]) == arches[-1]["selected"]
    assert all(
        a["n_language"] == 0
        for a in [read_json(project.store.latest("dmole-vision-only.allocate", n).file("arch.json")) for n in names]
    )
    uniform = [
        read_json(project.store.latest("dmole-uniform.allocate", n).file("arch.json"))["selected"] for n in names
    ]
    assert all(selected == uniform[0] for selected in uniform)  # the same modules for every task
    metrics = read_json(report.version.file("cl_metrics.json"))["methods"]
    assert set(metrics) == {"zero-shot", "dmole", *ablations}
    dmole = [read_json(project.store.latest("allocate", n).file("arch.json"))["selected"] for n in names]
    assert dmole != uniform
    markdown = report.version.file("report.md").read_text()
    assert all(f"| {method} |" in markdown for method in ablations)


@pytest.mark.slow  # 18 s; the second-expert rules: test_dmole_rules; the report's tables: test_report
def test_report_counts_second_experts_and_eval_takes_the_second_expert_rules(make_project):
    project = make_project("second")
    report = run_pipeline(project, methods=("dmole",))
    last = project.config.task_names[-1]
    counted = read_json(report.version.file("cl_metrics.json"))["methods"]["dmole"]["second_experts"]
    predictions = [
        r
        for t in project.config.task_names
        for r in read_parquet(project.store.latest("eval", last).file(f"predictions/{t}.parquet")).to_pylist()
    ]
    assert counted["two"] == sum(len(r["routed_tasks"]) == 2 for r in predictions)
    assert (
        counted["samples"] == len(predictions) and "## Second experts" in report.version.file("report.md").read_text()
    )
    strict = evaluate(project, last, EvalOptions(batch_size=4, second_expert="margin", second_margin=1e-9))
    routed = [
        r
        for t in project.config.task_names
        for r in read_parquet(strict.version.file(f"predictions/{t}.parquet")).to_pylist()
    ]
    assert all(len(r["routed_tasks"]) <= 1 for r in routed)  # a zero margin admits no second expert
    weighted = evaluate(project, last, EvalOptions(batch_size=4, second_expert="weighted"))
    assert weighted.version.manifest["config"]["options"]["second_expert"] == "weighted"


def test_the_reference_profile_sets_the_official_choices_under_workspace_and_flags(micro_bench, tmp_path):
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project
    from dmole.stages.resolve import REFERENCE_PROFILE

    root = tmp_path / "reference"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        profile="reference",
        stages={"train-task": {"group_by_length": False}},
    )
    config = Project.open(root).config
    for stage, values in REFERENCE_PROFILE.items():
        options = stage_options(config, stage)
        for key, value in values.items():
            expected = False if key == "group_by_length" else value  # the workspace's setting wins
            assert getattr(options, key) == expected, (stage, key)
    assert stage_options(config, "eval", {"routing": "per-sample"}).routing == "per-sample"
    create_workspace(tmp_path / "own", model=micro_bench / "base-model", data=micro_bench / "data")
    assert stage_options(Project.open(tmp_path / "own").config, "eval").routing == "per-sample"


@pytest.mark.slow
def test_two_runs_of_the_same_pipeline_give_identical_reports(micro_bench, tmp_path):
    """The whole loop is a pure function of its inputs and seeds: two fresh workspaces over the same data and
    base model end with the same report, to the last digit (the README's figures depend on it)."""
    from safetensors.torch import load_file

    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    reports, experts = [], []
    for name in ("first", "second"):
        create_workspace(
            tmp_path / name,
            model=micro_bench / "base-model",
            data=micro_bench / "data",
            tasks=["color-vqa", "opposite-short"],
            stages=MICRO_STAGES,
        )
        project = Project.open(tmp_path / name)
        reports.append(read_json(run_pipeline(project, ("dmole", "seq-lora")).version.file("cl_metrics.json")))
        experts.append(
            load_file(project.store.latest("train-task", "opposite-short").file("expert/adapter_model.safetensors"))
        )
    assert reports[0] == reports[1]
    assert experts[0].keys() == experts[1].keys()
    assert all(torch.equal(experts[0][k], experts[1][k]) for k in experts[0])  # bit for bit
    assert any(".lora_B." in k and experts[0][k].abs().sum() > 0 for k in experts[0])  # and trained


def test_roe_on_the_continual_model_routes_experts_as_eval_does(dmole_run):
    """route-train --from T: RoE on D-MoLE's model after T, experts routed per sample. Without RoE it scores
    what `eval --after T` scores; eval --roe rebuilds the same composed model (batch 1 and batch 4 alike: the
    gather rule narrows each layer's expert weights to its executing rows)."""
    from dmole.stages.roe_eval import RoEEvalOptions, evaluate_roe
    from dmole.stages.route_train import RouteTrainOptions, route_train

    project = dmole_run
    after = project.config.task_names[-1]
    trained = route_train(
        project, RouteTrainOptions(start=after, epochs=1, batch_size=8, roe_lr=1e-2, eval_batch_size=4)
    )
    report = read_json(trained.version.file("roe_report.json"))
    config = read_json(trained.version.file("roe_config.json"))
    assert config["from"] == after and config["stage2_mode"] == "frozen"
    assert report["dense_reference"] == f"dmole after {after}"
    scores = {
        r["task"]: r["score"]
        for r in read_parquet(project.store.latest("eval", after).file("scores.parquet")).to_pylist()
    }
    assert {t: v["dense_score"] for t, v in report["per_task"].items()} == pytest.approx(scores)
    for task, row in report["per_task"].items():  # RoE on over RoE off, per task
        assert row["relative"] == (pytest.approx(row["roe_score"] / scores[task]) if scores[task] else None)
    continual = report["continual"]
    assert continual["after"] == after and continual["dense_last"] == pytest.approx(sum(scores.values()) / 5)
    diagonal = continual["diagonal"]
    assert continual["roe_bwt"] == pytest.approx(
        sum(report["per_task"][t]["roe_score"] - diagonal[t] for t in list(diagonal)[:-1]) / 4
    )
    routed = [evaluate_roe(project, RoEEvalOptions(batch_size=b), force=True).version for b in (1, 4)]
    decisions = [read_parquet(v.file("routing_decisions.parquet")).to_pydict() for v in routed]
    assert decisions[0]["applied_skip"] == decisions[1]["applied_skip"]
    assert read_json(routed[1].file("roe_report.json"))["roe_score"] == pytest.approx(report["roe_score"])


def test_the_redundancy_prior_is_measured_on_the_continual_model_with_its_experts_routed(dmole_run):
    """route-train --from T with the synthetic workspaces' router prior: the layers' change is measured with each
    sample's experts routed in, as training runs them (it used to run the experts outside their routing and stop)."""
    from dmole.stages.route_train import RouteTrainOptions, route_train

    project = dmole_run
    options = RouteTrainOptions(
        start=project.config.task_names[-1], epochs=1, batch_size=8, eval_batch_size=4, router_prior="redundancy"
    )
    trained = route_train(project, options, force=True)
    config = read_json(trained.version.file("roe_config.json"))
    offsets = config["router_prior"]
    routable = config["routable"]
    assert sorted(int(layer) for layer in offsets) == sorted(routable)
    assert sum(v > 0 for v in offsets.values()) == round(options.skip_ratio * len(routable))
