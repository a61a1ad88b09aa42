"""`route-train` and `roe-eval` end to end on a micro benchmark with a tiny random model: the artifacts,
their columns and names, the summary, re-runs, and the command line."""

from __future__ import annotations

import json

import pytest
import typer
from safetensors import safe_open
from typer.testing import CliRunner

from dmole.artifacts.io import read_parquet
from dmole.cli.common import JsonOption
from dmole.cli.roe_cmds import register, show_route_train
from dmole.stages.roe.continual import CompositionError
from dmole.stages.roe_eval import RoEEvalOptions, evaluate_roe, roe_summary
from dmole.stages.route_train import RouteTrainError, RouteTrainOptions, route_train
from tiny_sizes import small_lm, tiny_roe_project

SIZE = small_lm()
OPTIONS = dict(epochs=2, batch_size=4, roe_lr=1e-2, eval_batch_size=4, max_eval_samples=2, stage2_mode="frozen")
DECISION_COLUMNS = [
    "run_id",
    "benchmark",
    "example_id",
    "turn",
    "layer",
    "routable",
    "logit_exec",
    "logit_skip",
    "decided_skip",
    "applied_skip",
    "batch_rule",
    "batch_size",
    "n_prompt_tokens",
    "n_prefix_tokens",
    "n_question_tokens",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_roe_project(tmp_path_factory.mktemp("roe-stage"), SIZE)


@pytest.fixture(scope="module")
def trained(project):
    return route_train(project, RouteTrainOptions(**OPTIONS))


def test_route_train_writes_weights_config_log_decisions_and_report(project, trained):
    version = trained.version
    with safe_open(str(version.file("roe_weights.safetensors")), framework="pt") as handle:
        names, metadata = set(handle.keys()), handle.metadata()
    assert names == {
        f"roe.layers.{l}.{part}"
        for l in (1, 2, 3)
        for part in ("router.weight", "prior", "adapter.down.weight", "adapter.up.weight")
    }
    assert metadata["family"] == "llava" and metadata["routable"] == "[1, 2, 3]" and metadata["rank"] == "16"
    # the stage's own resident peak (reset when it began): at least the model it loaded, less than the machine
    assert 10 * 2**20 < version.manifest["summary"]["peak_rss_bytes"] < 64 * 2**30
    assert metadata["variant"] == "pooled" and metadata["rho"] == "0.3" and len(metadata["base_hash"]) == 64
    config = json.loads(version.file("roe_config.json").read_text())
    assert config["always_execute"] == [0] and config["d_model"] == 64 and config["stage2_mode"] == "frozen"
    assert config["router_prior"] is None  # the spec's default: no prior

    log = read_parquet(version.file("train_log.parquet")).to_pydict()
    for column in (
        "step",
        "stage",
        "tau",
        "beta",
        "ce",
        "reg",
        "soft_skip",
        "hard_skip",
        "loss",
        "lr/roe_router",
        "lr/roe_adapter",
    ):
        assert column in log
    assert set(log["stage"]) == {0.0, 1.0, 2.0}
    assert all(lr == 0 for lr, stage in zip(log["lr/roe_router"], log["stage"]) if stage == 0)

    decisions = read_parquet(version.file("routing_decisions.parquet"))
    assert decisions.column_names == DECISION_COLUMNS
    assert decisions.num_rows == 5 * 2 * 4  # tasks × examples × layers
    rows = decisions.to_pylist()
    assert not any(r["applied_skip"] for r in rows if r["layer"] == 0)
    assert all(r["logit_exec"] is not None for r in rows if r["routable"])

    report = json.loads(version.file("roe_report.json").read_text())
    assert len(report["skip_rate_per_layer"]) == 4 and report["skip_rate_per_layer"][0] == 0.0
    assert report["batch_rule_applied"] == "gather"
    assert set(report["per_task"]) == set(project.config.task_names)
    for task in report["per_task"].values():  # RoE on over RoE off, per task (None without a dense score)
        assert task["relative"] == (
            pytest.approx(task["roe_score"] / task["dense_score"]) if task["dense_score"] else None
        )
    relatives = [t["relative"] for t in report["per_task"].values() if t["relative"] is not None]
    assert report["mean_relative"] == (pytest.approx(sum(relatives) / len(relatives)) if relatives else None)
    assert 0 <= report["dense_score"] <= 100 and 0 <= report["roe_score"] <= 100
    assert report["theoretical_saving"]["decoder_saving"] <= report["skip_rate_all_layers"]


def test_the_learned_routing_is_not_static_layer_dropping(trained):
    """Examples skip different sets of layers: the routers read the example (the same set for every example
    would be layer dropping, which a routing-token run on the synthetic benchmark collapsed to)."""
    rows = read_parquet(trained.version.file("routing_decisions.parquet")).to_pylist()
    skipped: dict[tuple[str, str], set[int]] = {}
    for row in rows:
        layers = skipped.setdefault((row["benchmark"], row["example_id"]), set())
        if row["routable"] and row["applied_skip"]:
            layers.add(row["layer"])
    assert len({frozenset(layers) for layers in skipped.values()}) >= 2
    per_layer = {l: {row["applied_skip"] for row in rows if row["layer"] == l and row["routable"]} for l in (1, 2, 3)}
    assert any(decisions == {True, False} for decisions in per_layer.values())  # a layer skipped by some only


def test_route_train_is_up_to_date_on_a_second_run(project, trained):
    again = route_train(project, RouteTrainOptions(**OPTIONS))
    assert again.up_to_date and again.version.number == trained.version.number


def test_roe_eval_and_summary(project, trained):
    before = roe_summary(project)
    assert before["source"] == f"route-train v{trained.version.number}"
    result = evaluate_roe(project, RoEEvalOptions(batch_size=1, max_samples=2))
    summary = roe_summary(project)
    assert summary["source"] == f"roe-eval v{result.version.number}"
    for key in ("skip_rate", "skip_rate_per_layer", "dense_score", "roe_score", "per_task"):
        assert key in summary
    # Decisions do not depend on the batch: batch 1 here, batch 4 in route-train.
    assert summary["skip_rate_per_layer"] == before["skip_rate_per_layer"]
    assert summary["roe_score"] == before["roe_score"] and summary["dense_score"] == before["dense_score"]


def test_a_start_that_is_no_task_or_a_tuned_backbone_on_a_continual_model_is_refused(project):
    with pytest.raises(CompositionError, match="not 'base' nor a task"):
        route_train(project, RouteTrainOptions(start="train-task"))
    with pytest.raises(RouteTrainError, match="must be frozen, not full"):
        route_train(project, RouteTrainOptions(start="color-vqa", stage2_mode="full"))


def test_lora_stage2_saves_a_peft_adapter_and_eval_reloads_it(project):
    from peft import PeftModel

    from dmole.stages.models.registry import load_family

    result = route_train(
        project, RouteTrainOptions(**OPTIONS | {"epochs": 1, "stage2_mode": "lora"}, lora_lr=1e-2, backbone_lr=1e-2)
    )
    version = result.version
    with safe_open(str(version.file("backbone.safetensors")), framework="pt") as handle:
        names = set(handle.keys())
    assert names and all(n.startswith("model.multi_modal_projector.") for n in names)  # LoRA holds the LM's change
    log = read_parquet(version.file("train_log.parquet")).to_pydict()
    assert [lr > 0 for lr in log["lr/backbone_lora"]] == [stage == 2 for stage in log["stage"]]
    peft = PeftModel.from_pretrained(load_family(project.model_path).model, version.path / "backbone_lora")
    lora = {n for n, _ in peft.named_parameters() if ".lora_A." in n}
    assert lora and all(".language_model." in n for n in lora)  # loadable by PEFT alone, on the LM only
    trained = json.loads(version.file("roe_report.json").read_text())
    reloaded = evaluate_roe(project, RoEEvalOptions(batch_size=4, max_samples=2), force=True)
    again = json.loads(reloaded.version.file("roe_report.json").read_text())
    for run in ("forced_score", "roe_score"):
        assert again[run] == pytest.approx(trained[run]), run


def test_full_stage2_saves_the_backbone_and_reports_base_and_dense(project):
    result = route_train(project, RouteTrainOptions(**OPTIONS | {"epochs": 1, "stage2_mode": "full"}, backbone_lr=1e-2))
    report = json.loads(result.version.file("roe_report.json").read_text())
    with safe_open(str(result.version.file("backbone.safetensors")), framework="pt") as handle:
        names = set(handle.keys())
    assert any(n.startswith("model.language_model.layers.") for n in names)
    assert any(n.startswith("model.multi_modal_projector.") for n in names)
    assert not any("vision_tower" in n for n in names)
    assert report["dense_reference"] == "dense twin"
    assert set(report["per_task"]["color-vqa"]) >= {"base_score", "dense_score", "forced_score", "roe_score"}
    summary = roe_summary(project)
    assert summary["source"] == f"route-train v{result.version.number}"  # roe-eval belongs to older weights
    log = read_parquet(result.version.file("train_log.parquet")).to_pydict()
    assert [lr > 0 for lr in log["lr/backbone_llm"]] == [stage == 2 for stage in log["stage"]]


def test_accumulated_steps_train_what_the_large_batch_trains(project, monkeypatch):
    """RoE's objective is a mean of per-example terms and each sample's stage-0 draws are its own, so two
    micro-batches of 2 give the step one batch of 4 gives (full mode: backbone and twin too)."""
    from safetensors.torch import load_file

    from dmole.stages.training import loop

    sizes: list[int] = []
    cut = loop.micro_batches
    monkeypatch.setattr(
        loop, "micro_batches", lambda indices, n: sizes.extend(len(m) for m in cut(indices, n)) or cut(indices, n)
    )
    results = []
    for n in (1, 2):
        sizes.clear()
        results.append(
            route_train(project, RouteTrainOptions(**OPTIONS | {"epochs": 1, "stage2_mode": "full", "grad_accum": n}))
        )
        assert set(sizes) == {4 // n}  # the micro-batches the loop ran
    for name in ("roe_weights.safetensors", "backbone.safetensors"):
        one, two = (load_file(r.version.file(name)) for r in results)
        worst = max(float((one[k] - two[k]).abs().max()) for k in one)
        assert worst <= 1e-5, (name, worst)
    logs = [read_parquet(r.version.file("train_log.parquet")).to_pydict() for r in results]
    for column in ("ce", "soft_skip", "loss"):
        assert logs[0][column] == pytest.approx(logs[1][column], rel=1e-4, abs=1e-6), column


@pytest.mark.usefixtures("trained")  # show-roe reads the route-train run
def test_command_line(project):
    app = typer.Typer()
    register(app)

    @app.command("show-roe")
    def show(json_output: JsonOption = False) -> None:  # how the lead's `show route-train` calls it
        show_route_train(project.root, json_output)

    runner = CliRunner()
    refused = runner.invoke(app, ["route-train", "--from", "train-task", "-w", str(project.root)])
    assert refused.exit_code == 2 and "not 'base' nor a task" in refused.output
    assert "--skip-ratio" in runner.invoke(app, ["route-train", "--help"]).output
    shown = runner.invoke(app, ["show-roe", "--json"])
    assert shown.exit_code == 0, shown.output
    assert {"skip_rate", "skip_rate_per_layer", "dense_score", "roe_score"} <= set(json.loads(shown.output))
    table = runner.invoke(app, ["show-roe"])
    assert "skip rate per layer" in table.output and "average" in table.output
