"""One source of truth for every option: the generated flags, the typed workspace sections, the stage functions
that resolve the workspace's defaults themselves, and values fixed by an upstream artifact."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_json
from dmole.cli.app import app
from dmole.stages.config import ConfigError
from dmole.stages.project import Project
from dmole.stages.registry import STAGES, with_options

runner = CliRunner()


def dmole(project: Project, *args: str):
    return runner.invoke(app, [*args, "--workspace", str(project.root)])


def edit_workspace(project: Project, **sections) -> None:
    path = project.root / "workspace.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **sections}))


@pytest.mark.parametrize("stage", sorted(with_options()))
def test_every_option_of_a_stage_is_a_flag_of_its_command(stage):
    declared = STAGES[stage]
    text = runner.invoke(app, [*declared.command_line, "--help"], env={"COLUMNS": "250"}).output
    flags = {"hparams": "--hparam", **declared.flags}
    for name in declared.options.model_fields:
        assert flags.get(name, "--" + name.replace("_", "-")) in text, (stage, name)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_takes_quiet(stage):
    """A shell loop can write -q on every stage's command."""
    text = runner.invoke(app, [*STAGES[stage].command_line[:1], "--help"], env={"COLUMNS": "250"}).output
    assert "--quiet" in text and "-q" in text, stage


def test_allocating_at_rank_4_trains_rank_4_experts_at_scale_2(make_project):
    """Regression: the rank lived in allocate's and train-task's options; train-task now reads the allocation's.
    D-MoLE's alpha follows the rank (2r, as the reference's DMoLELinear is built), so the scale stays 2."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    project = make_project()
    task = project.config.task_names[0]
    assert dmole(project, "zc-score", "--task", task).exit_code == 0
    assert dmole(project, "allocate", "--task", task, "--rank", "4").exit_code == 0
    trained = dmole(project, "train-task", "--task", task)
    assert trained.exit_code == 0, trained.output
    folder = project.store.latest("train-task", task).path / "expert"
    config = read_json(folder / "adapter_config.json")
    assert config["r"] == 4 and config["lora_alpha"] == 2 * 4
    loaded = PeftModel.from_pretrained(project.load_model().model, folder)
    scales = {layer.scaling["default"] for layer in loaded.modules() if isinstance(layer, LoraLayer)}
    assert scales == {config["lora_alpha"] / config["r"]} == {2.0}


def test_an_explicit_dmole_alpha_overrides_the_2r_default():
    from dmole.stages.methods.dmole import DMoLEHyper

    assert DMoLEHyper().lora(4).alpha == 8 and DMoLEHyper().lora(8).alpha == 16
    assert DMoLEHyper(alpha=16).lora(4).alpha == 16


@pytest.mark.parametrize(
    "section, message",
    [
        ({"stages": {"train_task": {"lr": 3e-4}}}, "unknown stage 'train_task'"),
        ({"stages": {"train-task": {"lr": -5}}}, "stage 'train-task': lr: Input should be greater than 0"),
        ({"stages": {"train-task": {"lrate": 1e-4}}}, "stage 'train-task': lrate: unknown key; the known ones are "),
        (
            {"methods": {"lwf-lora": {"temprature": 1.0}}},
            "method 'lwf-lora': temprature: unknown key; the known ones are rank, alpha, dropout, parity, temperature",
        ),
        ({"methods": {"zero-shot": {"rank": 4}}}, "method 'zero-shot': rank: unknown key; there are none to set"),
        ({"methods": {"lwf": {}}}, "unknown method 'lwf'"),
        ({"method": "ewc"}, "unknown method 'ewc'"),
    ],
)
def test_a_bad_workspace_section_is_one_line_naming_it(make_project, section, message):
    """Regression: a misspelt stage key in workspace.json was silently ignored."""
    project = make_project()
    edit_workspace(project, **section)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Project.open(project.root)
    result = dmole(project, "tasks")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (wrapped at most once by the console)


def test_a_notebook_call_uses_the_workspace_defaults_and_hashes_like_the_cli(make_project):
    """Regression: `train_task(project, t)` ignored the workspace's `stages` defaults and hashed differently."""
    from dmole.stages.train_task import train_task

    project = make_project(stages={**MICRO_STAGES, "train-task": {**MICRO_STAGES["train-task"], "lr": 2e-3}})
    task = project.config.task_names[0]
    for stage in ("zc-score", "allocate"):
        assert dmole(project, stage, "--task", task).exit_code == 0
    first = train_task(project, task)
    assert first.version.manifest["config"]["options"]["lr"] == 2e-3
    again = dmole(project, "train-task", "--task", task)
    assert again.exit_code == 0 and "up to date" in again.output
    changed = dmole(project, "train-task", "--task", task, "--lr", "1e-3")
    assert changed.exit_code == 0 and "wrote v2" in changed.output


def test_method_hyperparameters_resolve_defaults_then_workspace_then_flags(make_project):
    from dmole.stages.train_task import train_run

    project = make_project()
    task = project.config.task_names[0]
    edit_workspace(project, methods={"lwf-lora": {"temperature": 1.5}})
    project = Project.open(project.root)
    _, run, _ = train_run(project, task, {"method": "lwf-lora"})
    assert (run.hyper.temperature, run.hyper.weight) == (1.5, 1.0)
    _, run, _ = train_run(project, task, {"method": "lwf-lora", "hparams": {"weight": 0.5}})
    assert (run.hyper.temperature, run.hyper.weight) == (1.5, 0.5)
    bad = dmole(project, "train-task", "--task", task, "--method", "lwf-lora", "--hparam", "temp=2")
    assert bad.exit_code == 2 and "temp: unknown key; the known ones are rank, alpha, dropout" in bad.output
    malformed = dmole(project, "train-task", "--task", task, "--method", "lwf-lora", "--hparam", "weight")
    assert malformed.exit_code == 2 and "expected KEY=VALUE" in malformed.output


def test_a_choice_option_offers_its_choices(make_project):
    project = make_project()
    result = dmole(project, "train-task", "--task", project.config.task_names[0], "--precision", "fp16")
    assert result.exit_code == 2 and "'fp16' is not one of" in result.output


def test_image_padding_is_a_workspace_setting_that_reaches_the_model_and_the_hashes(micro_bench, tmp_path):
    from dmole.stages.init import create_workspace
    from dmole.stages.runner import model_fingerprint

    projects = {}
    for ratio in ("processor", "pad"):
        create_workspace(
            tmp_path / ratio, model=micro_bench / "base-model", data=micro_bench / "data", image_aspect_ratio=ratio
        )
        projects[ratio] = Project.open(tmp_path / ratio)
    assert projects["pad"].load_model().pad_to_square and not projects["processor"].load_model().pad_to_square
    assert model_fingerprint(projects["pad"]) != model_fingerprint(projects["processor"])  # embeddings etc. differ
    assert "image_aspect_ratio" not in model_fingerprint(projects["processor"])  # older versions stay current


def test_eval_takes_each_flag_for_the_stage_it_runs(make_project):
    """eval's flags serve eval and, with --roe, roe-eval: an option of one is refused for the other."""
    project = make_project()
    task = project.config.task_names[0]
    plain = dmole(project, "eval", "--after", task, "--batch-rule", "or")
    assert plain.exit_code == 2 and "--batch-rule is not an option of eval" in plain.output
    roe = dmole(project, "eval", "--roe", "--routing", "batch-vote")
    assert roe.exit_code == 2 and "--routing is not an option of eval --roe" in roe.output


def test_a_stage_prints_its_result_as_json(make_project):
    project = make_project()
    task = project.config.task_names[0]
    assert dmole(project, "zc-score", "--task", task, "-q").exit_code == 0
    first = dmole(project, "allocate", "--task", task, "--json")
    assert first.exit_code == 0, first.output
    assert {k: v for k, v in json.loads(first.output).items() if k in ("stage", "task", "version", "up_to_date")} == {
        "stage": "allocate",
        "task": task,
        "version": 1,
        "up_to_date": False,
    }
    assert json.loads(dmole(project, "allocate", "--task", task, "--json").output)["up_to_date"] is True


def test_a_workspace_stage_default_naming_an_unknown_method_is_refused_when_opened(make_project):
    project = make_project()
    edit_workspace(project, stages={"train-task": {"method": "nothing"}})
    with pytest.raises(ConfigError, match="stages: stage 'train-task': method: unknown method 'nothing'"):
        Project.open(project.root)


def test_a_task_field_added_later_stays_out_of_the_stages_configs_at_its_old_behaviour():
    """embed, zc-score and the RoE stages hash each task's spec: `skip_text_only` (added for CoIN's ScienceQA) at
    False is what every task did before it, so it must not make an upgraded workspace's artifacts stale."""
    from dmole.stages.config import TaskSpec
    from dmole.stages.options import hashed

    spec = {"name": "t", "family": "short", "train": "t/train.jsonl", "eval": "t/test.jsonl"}
    before = TaskSpec(**spec).model_dump()
    del before["skip_text_only"]
    assert hashed(TaskSpec(**spec)) == before
    assert hashed(TaskSpec(**spec, skip_text_only=True))["skip_text_only"] is True
