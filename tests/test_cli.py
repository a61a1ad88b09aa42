"""The workspace commands and artifact inspection from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from conftest import PIPELINE_TASKS, imported_by
from dmole.artifacts import Workspace
from dmole.cli.app import app
from test_store import commit

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_help_lists_the_commands_without_importing_torch():
    code = "import sys; from dmole.cli.app import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout.split() == [
        "False",
        "False",
    ]
    text = invoke("--help")
    for command in (
        "init",
        "tasks",
        "synth",
        "demo",
        "embed",
        "fit-router",
        "zc-score",
        "allocate",
        "train-task",
        "eval",
        "rescore",
        "general",
        "report",
        "ls",
        "show",
    ):
        assert command in text


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert invoke("--version") == f"dmole {version('dmole')}\n"


def test_init_selects_and_orders_tasks(micro_bench, tmp_path):
    workspace = tmp_path / "ws"
    invoke(
        "init",
        "--model",
        str(micro_bench / "base-model"),
        "--data",
        str(micro_bench / "data"),
        "--tasks",
        "shape-choice,color-vqa",
        "--workspace",
        str(workspace),
    )
    assert invoke("tasks", "--workspace", str(workspace)).split() == ["shape-choice", "color-vqa"]
    again = runner.invoke(
        app,
        [
            "init",
            "--model",
            str(micro_bench / "base-model"),
            "--data",
            str(micro_bench / "data"),
            "--workspace",
            str(workspace),
        ],
    )
    assert again.exit_code == 2 and "already exists" in again.output


def test_ls_and_show_json(make_project):
    project = make_project()
    task = project.config.task_names[0]
    invoke("embed", "--task", task, "--workspace", str(project.root))
    rows = json.loads(invoke("ls", "--json", "--workspace", str(project.root)))
    assert [(r["stage"], r["task"], r["version"], r["status"]) for r in rows] == [("embed", task, 1, "ok")]
    shown = json.loads(invoke("show", "embed", "--task", task, "--json", "--workspace", str(project.root)))
    artifact = shown["artifacts"][0]
    assert artifact["version"] == 1 and artifact["summary"]["n_train"] == 12
    assert {t["file"]: t["rows"] for t in artifact["tables"]} == {"test.parquet": 4, "train.parquet": 12}
    assert "embed" in invoke("ls", "--workspace", str(project.root))


def test_show_fit_router_includes_the_confusion_matrix(make_project):
    project = make_project()
    for task in project.config.task_names[:2]:
        invoke("embed", "--task", task, "--workspace", str(project.root))
        invoke("fit-router", "--task", task, "--workspace", str(project.root))
    shown = json.loads(invoke("show", "fit-router", "--json", "--workspace", str(project.root)))
    confusion = shown["confusion"]
    fitted = project.config.task_names[:2]
    assert set(confusion) == set(fitted)
    for task in fitted:
        assert set(confusion[task]) == {*fitted, "none"} and sum(confusion[task].values()) == 4
        row = shown["quantiles"][task]  # the threshold against its in-task error spread
        assert row["threshold"] == row[f"q{round(row['quantile'] * 100)}"] and row["min"] <= row["q50"] <= row["max"]


def test_recomputing_identical_content_keeps_downstream_fresh(make_project):
    project = make_project()
    task = project.config.task_names[0]
    invoke("embed", "--task", task, "--workspace", str(project.root))
    invoke("fit-router", "--task", task, "--workspace", str(project.root))
    invoke("embed", "--task", task, "--force", "--batch-size", "3", "--workspace", str(project.root))
    rows = {r["stage"]: r["status"] for r in json.loads(invoke("ls", "--json", "--workspace", str(project.root)))}
    assert rows == {"embed": "ok", "fit-router": "ok"}  # same content: recomputing does not make it stale


def test_a_resumed_loop_finds_every_stage_up_to_date_without_importing_torch(micro_bench, run_cli_pipeline, tmp_path):
    """Running the README's loop again over a finished workspace only reads manifests: no stage imports torch,
    transformers or peft to find its result up to date (torch alone takes a second and more to import), D-MoLE's
    train-task of a second task included, whose training partners come from the routers."""
    workspace = run_cli_pipeline(micro_bench / "base-model", tmp_path / "ws")
    preprocessing = ("embed", "fit-router", "zc-score", "allocate")
    commands = [[stage, "--task", task] for task in PIPELINE_TASKS for stage in preprocessing]
    commands += [[*step, task] for task in PIPELINE_TASKS for step in (["train-task", "--task"], ["eval", "--after"])]
    summaries, imported = imported_by(
        [[*args, "-q", "--workspace", str(workspace)] for args in commands], ("torch", "transformers", "peft")
    )
    assert len(summaries) == len(commands) and all("up to date" in line for line in summaries), summaries
    assert not any(imported.values()), imported


def test_light_stages_import_no_torch_and_record_package_versions(make_project):
    """allocate sorts a score table: it needs neither torch, transformers nor peft, even to record their versions
    in its manifest (they come from package metadata); a stage that ran torch also records its device."""
    project = make_project()
    task = project.config.task_names[0]
    invoke("zc-score", "--task", task, "--workspace", str(project.root))
    heavy = ("torch", "transformers", "peft", "matplotlib")
    for command in (["allocate", "--task", task], ["tasks"], ["ls"]):  # `report`: tests/test_report.py
        _, imported = imported_by([[*command, "--workspace", str(project.root)]], heavy)
        assert not any(imported.values()), (command, imported)
    light = project.store.latest("allocate", task).manifest["environment"]
    heavy = project.store.latest("zc-score", task).manifest["environment"]
    assert {"torch", "transformers", "peft"} <= set(light) and "device" not in light
    assert heavy["torch"] == light["torch"] and heavy["device"] == "cpu"


def test_fit_router_starts_without_transformers(make_project):
    """fit-router trains a small autoencoder with torch alone: its process imports neither transformers nor peft
    (nor pyarrow.dataset, which reading one Parquet file does not need), a few seconds of every start, and still
    records the device it ran on."""
    project = make_project()
    task = project.config.task_names[0]
    invoke("embed", "--task", task, "--workspace", str(project.root))
    _, imported = imported_by(
        [["fit-router", "--task", task, "--workspace", str(project.root)]],
        ("torch", "transformers", "peft", "pyarrow.dataset"),
    )
    assert imported == {"torch": True, "transformers": False, "peft": False, "pyarrow.dataset": False}
    environment = project.store.latest("fit-router", task).manifest["environment"]
    assert environment["device"] == "cpu" and environment["cpu_threads"] >= 1


def test_show_names_the_stages_when_given_an_unknown_one(make_project):
    project = make_project()
    for stage in ("embedding", "lwf.train-task"):
        result = runner.invoke(app, ["show", stage, "--workspace", str(project.root)])
        assert result.exit_code == 2 and f"unknown stage '{stage}'" in result.output and "fit-router" in result.output
    known = runner.invoke(app, ["show", "seq-lora.train-task", "--workspace", str(project.root)])
    assert known.exit_code == 2 and "no 'seq-lora.train-task' artifacts" in known.output


def test_a_workspace_is_also_named_by_its_workspace_json(make_project):
    project = make_project()
    named = runner.invoke(app, ["tasks", "--workspace", str(project.root / "workspace.json")])
    assert named.exit_code == 0 and named.output.split() == list(project.config.task_names), named.output


def test_show_names_what_a_stage_keyed_by_method_holds_when_given_an_unknown_key(make_project):
    """`repeat` and `sweep` are keyed by method: an unknown key names the workspace's tasks and the stage's keys."""
    project = make_project()
    commit(Workspace(project.root), "repeat", "dmole", {"result.json": b"{}"})
    result = runner.invoke(app, ["show", "repeat", "--task", "dmol", "--workspace", str(project.root)])
    assert result.exit_code == 2 and "unknown task 'dmol'" in result.output, result.output
    assert result.output.rstrip().endswith("'repeat' has artifacts for dmole"), result.output
