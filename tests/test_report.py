"""The report from a micro end-to-end run: every figure is a readable PNG, every markdown table equals the
Parquet / JSON it was drawn from, `--out` copies it; and the run logs reach live trackers."""

from __future__ import annotations

import errno
import importlib.machinery
import json
import os
import struct
import sys
import types
from collections import Counter, defaultdict

import pytest
import torch
from typer.testing import CliRunner

from conftest import MICRO_STAGES, imported_by
from dmole.artifacts.io import read_json, read_parquet
from dmole.cli.app import app
from dmole.stages.demo import run_pipeline
from dmole.stages.errors import UserError
from dmole.stages.figures.allocation import KIND_ORDER, cell_text
from dmole.stages.init import create_workspace
from dmole.stages.project import Project
from dmole.stages.report import report
from dmole.stages.route_train import RouteTrainOptions, route_train
from dmole.stages.training.loop import LoopSettings, ParamGroup, train
from dmole.stages.training.trackers import open_loggers

FIGURES = ("matrix.png", "allocation.png", "activation.png", "sensitivity.png", "roe_skips.png")
METHODS = ("dmole", "seq-lora")


@pytest.fixture(scope="module")
def run(micro_bench, tmp_path_factory):
    """Two methods over the five tasks, then RoE: the report before RoE and the report after it."""
    root = tmp_path_factory.mktemp("report") / "ws"
    create_workspace(root, model=micro_bench / "base-model", data=micro_bench / "data", stages=MICRO_STAGES)
    project = Project.open(root)
    before = run_pipeline(project, methods=METHODS)
    route_train(project, RouteTrainOptions(epochs=1, batch_size=8, roe_lr=1e-2, eval_batch_size=4, max_eval_samples=2))
    return project, before.version, report(project).version


def sections(markdown: str) -> dict[tuple[str, str], list[list[list[str]]]]:
    """Tables (rows of cells, header first) under each (## heading, ### heading)."""
    tables: dict[tuple[str, str], list[list[list[str]]]] = defaultdict(list)
    h2 = h3 = ""
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            h2, h3 = line[3:], ""
        elif line.startswith("### "):
            h3 = line[4:]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if not previous.startswith("|"):
                tables[(h2, h3)].append([])
            tables[(h2, h3)][-1].append(cells)
        previous = line
    return tables


def table(version, h2: str, h3: str = "", index: int = 0) -> dict[str, dict[str, str]]:
    """A markdown table as {row label: {column: cell}}."""
    markdown = version.file("report.md").read_text(encoding="utf-8")
    header, *rows = sections(markdown)[(h2, h3)][index]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in rows}


def number(cell: str, decimals: int):
    return pytest.approx(float(cell), abs=0.5 * 10**-decimals + 1e-9)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_each_figure_is_a_readable_png_linked_from_the_markdown(run):
    _project, _before, after = run
    markdown = after.file("report.md").read_text(encoding="utf-8")
    for name in FIGURES:
        path = after.file(name)
        width, height = png_size(path)
        assert 5_000 < path.stat().st_size < 150_000, name
        assert 500 <= width <= 1400 and 250 <= height <= 1000, (name, width, height)
        assert f"]({name})" in markdown, name
    assert list(read_json(after.file("figures.json"))) == list(FIGURES)


def test_roe_figure_only_once_route_train_ran(run):
    _project, before, after = run
    assert sorted(o["path"] for o in before.manifest["outputs"] if o["path"].endswith(".png")) == sorted(FIGURES[:-1])
    assert list(read_json(before.file("figures.json"))) == list(FIGURES[:-1])
    assert "RoE" not in before.file("report.md").read_text(encoding="utf-8")
    assert any(i["stage"] == "route-train" for i in after.manifest["inputs"])


def test_table2_says_which_hyperparameters_each_row_ran_with(run):
    from dmole.stages.figures.matrix import protocol

    _project, _, version = run
    shown = table(version, "Table 2: each task after the last stage, AVG, Last, BWT")
    assert {row["hyperparameters"] for row in shown.values()} == {"sourced defaults"}
    assert protocol({"weight": 0.1, "rank": 8}) == "rank=8, weight=0.1"


def test_matrix_and_metric_tables_equal_the_parquet_and_json(run):
    project, _, version = run
    tasks = project.config.task_names
    metrics = read_json(version.file("cl_metrics.json"))["methods"]
    reported = ("zero-shot", *METHODS)  # the zero-shot evaluation is Table 2's first row
    assert set(metrics) == set(reported)
    shown = table(version, "Continual-learning metrics (0-100)")
    for method, values in metrics.items():
        for key in ("last", "avg_seen", "avg_all", "bwt", "fwt"):
            assert values[key] == number(shown[method][key], 2), (method, key)
        field = values["field"]  # the field's names for the same matrix (tests/test_field_metrics.py)
        assert (field["mcitlib"]["mfn"], field["mcitlib"]["maa"]) == (values["last"], values["avg_seen"])
    cells = read_parquet(version.file("matrix.parquet")).to_pylist()
    assert len(cells) == len(reported) * (len(tasks) + 1) * len(tasks)
    labels = ["zero-shot", *(f"{t} {name}" for t, name in enumerate(tasks, start=1))]
    for method in reported:
        shown = table(version, "Matrix R (rows: after stage t; row 0: zero-shot)", method)
        assert list(shown) == labels
        for cell in (c for c in cells if c["method"] == method):
            assert cell["score"] == number(shown[labels[cell["stage"]]][cell["task"]], 2)


def test_allocation_table_equals_the_allocation_artifacts(run):
    project, _, version = run
    tasks = project.config.task_names
    cumulative = read_json(project.store.latest("allocate", tasks[-1]).file("arch.json"))["cumulative"]
    modules = read_parquet(project.store.latest("zc-score", tasks[-1]).file("scores.parquet")).to_pylist()
    expected = defaultdict(lambda: defaultdict(set))  # (tower, layer) -> task -> kinds
    for row in modules:
        for task_id in cumulative[row["module"]]:
            expected[(row["tower"], row["layer"])][tasks[task_id - 1]].add(row["kind"])
    for tower, title in (("vision", "vision tower"), ("language", "language model")):
        shown = table(version, "Expert allocation", title)
        layers = sorted(layer for t, layer in expected if t == tower)
        assert list(shown) == [*map(str, layers), "modules"]
        for layer in layers:
            for task in tasks:
                kinds = sorted(expected[(tower, layer)][task], key=KIND_ORDER.index)
                assert shown[str(layer)][task] == cell_text(kinds), (tower, layer, task)
        for task in tasks:
            assert int(shown["modules"][task]) == sum(len(expected[(tower, l)][task]) for l in layers)


def test_activation_tables_equal_the_routes_in_the_predictions(run):
    project, _, version = run
    tasks = project.config.task_names

    def routes(after, task):
        return (
            read_parquet(project.store.latest("eval", after).file(f"predictions/{task}.parquet"))
            .column("routed_tasks")
            .to_pylist()
        )

    shown = table(version, "Expert activation (D-MoLE routing)")
    assert list(shown) == tasks
    for task in tasks:
        routed = routes(tasks[-1], task)
        assert int(shown[task]["samples"]) == len(routed)
        assert 100 * sum(not r for r in routed) / len(routed) == number(shown[task]["none"], 1)
        for k, expert in enumerate(tasks, start=1):
            assert 100 * sum(k in r for r in routed) / len(routed) == number(shown[task][expert], 1)
    rejected = table(version, "Expert activation (D-MoLE routing)", "Rejection of unseen tasks")
    assert list(rejected) == [f"{t} {name}" for t, name in enumerate(tasks[:-1], start=1)]
    for t, name in enumerate(tasks[:-1], start=1):
        unseen = [r for task in tasks[t:] for r in routes(name, task)]
        assert int(rejected[f"{t} {name}"]["unseen samples"]) == len(unseen)
        assert 100 * sum(not r for r in unseen) / len(unseen) == number(rejected[f"{t} {name}"]["rejected (%)"], 1)


def test_sensitivity_tables_equal_the_zero_cost_scores(run):
    project, _, version = run
    tasks = project.config.task_names
    for tower, title in (("vision", "vision tower"), ("language", "language model")):
        shown = table(version, "Zero-cost sensitivity", title)
        for task in tasks:
            summed = Counter()
            for row in read_parquet(project.store.latest("zc-score", task).file("scores.parquet")).to_pylist():
                if row["tower"] == tower:
                    summed[row["layer"]] += row["score"]
            assert list(shown) == [str(layer) for layer in sorted(summed)]
            for layer, score in summed.items():
                assert float(shown[str(layer)][task]) == pytest.approx(score, rel=5e-4), (tower, task, layer)


def test_roe_tables_equal_the_routing_decisions(run):
    project, _, version = run
    trained = project.store.latest("route-train", "all")
    rows = read_parquet(trained.file("routing_decisions.parquet")).to_pylist()
    summary = read_json(trained.file("roe_report.json"))
    per_layer = table(version, "RoE layer skipping")
    layers = sorted({r["layer"] for r in rows})
    assert list(per_layer) == [str(layer) for layer in layers]
    for layer in layers:
        decided = [r["applied_skip"] for r in rows if r["layer"] == layer]
        assert 100 * sum(decided) / len(decided) == number(per_layer[str(layer)]["skip rate (%)"], 1)
        assert 100 * summary["skip_rate_per_layer"][layer] == number(per_layer[str(layer)]["skip rate (%)"], 1)
        routable = any(r["routable"] for r in rows if r["layer"] == layer)
        assert per_layer[str(layer)]["routable"].startswith("yes" if routable else "no")
    skipped = Counter()
    for r in rows:
        skipped[(r["benchmark"], r["example_id"])] += bool(r["routable"] and r["applied_skip"])
    histogram = {
        k: int(v["examples"]) for k, v in table(version, "RoE layer skipping", index=1).items() if v["examples"] != "0"
    }
    assert histogram == {str(k): v for k, v in Counter(skipped.values()).items()}
    assert histogram == summary["skipped_layers_histogram"]
    patterns = table(version, "RoE layer skipping", index=2)
    sets: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        sets.setdefault((r["benchmark"], r["example_id"]), [])
        if r["routable"] and r["applied_skip"]:
            sets[r["benchmark"], r["example_id"]].append(r["layer"])
    expected = Counter((", ".join(map(str, sorted(v))) or "none", task) for (task, _), v in sets.items())
    shown = {(key, task): int(count) for key, row in patterns.items() for task, count in row.items() if count != "0"}
    assert shown == dict(expected)


def test_cli_report_out_copies_the_report_and_its_figures(run, tmp_path):
    project, _, version = run
    out = tmp_path / "figures"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--json", "--workspace", str(project.root)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["report"] == str(out / "report.md") and printed["figures"] == [str(out / n) for n in FIGURES]
    for name in ("report.md", *FIGURES):
        assert (out / name).read_bytes() == version.file(name).read_bytes(), name
    quiet = CliRunner().invoke(app, ["report", "-q", "--workspace", str(project.root)])
    assert quiet.exit_code == 0 and quiet.output.strip().splitlines()[-1].startswith("report all: up to date")


def test_report_out_on_a_disk_that_fills_keeps_the_previous_report_whole(run, tmp_path, monkeypatch):
    """A copy that fails half-way (the third file hits a full disk) leaves every file of the previous export as it
    was and no temp file; the user reads one line, as for an --out that names a file or a folder within one."""
    import dmole.artifacts.io as io

    project, _, _ = run
    out = tmp_path / "exported"
    out.mkdir()
    for name in ("report.md", *FIGURES):
        (out / name).write_text(f"previous {name}")
    copies = []
    real_copy = io.shutil.copyfileobj

    def copy_until_full(source, target):
        copies.append(source.name)
        if len(copies) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_copy(source, target)

    monkeypatch.setattr(io.shutil, "copyfileobj", copy_until_full)
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--workspace", str(project.root)])
    assert result.exit_code == 1 and result.output.strip() == f"error: {os.strerror(errno.ENOSPC)}", result.output
    assert len(copies) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(("report.md", *FIGURES))
    assert all((out / name).read_text() == f"previous {name}" for name in ("report.md", *FIGURES))

    for blocked in (out / "report.md", out / "report.md" / "under"):  # --out names a file, or a folder under one
        result = CliRunner().invoke(app, ["report", "--out", str(blocked), "--workspace", str(project.root)])
        assert result.exit_code == 2 and result.output.strip() == (
            f"error: --out {blocked} cannot be created: {out / 'report.md'} is a file, not a folder"
        )
    (out / FIGURES[-1]).unlink()
    (out / FIGURES[-1]).mkdir()
    monkeypatch.setattr(io.shutil, "copyfileobj", real_copy)
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--workspace", str(project.root)])
    assert result.exit_code == 1 and result.output.strip() == f"error: {out / FIGURES[-1]}: Is a directory"
    assert (out / "report.md").read_text() == "previous report.md"


def test_an_up_to_date_report_imports_no_torch_nor_matplotlib(run):
    """A shell loop's `dmole report` after nothing changed reads JSON and Parquet only."""
    project, _, _ = run
    _, imported = imported_by(
        [["report", "--json", "--workspace", str(project.root)]], ("torch", "transformers", "peft", "matplotlib")
    )
    assert not any(imported.values()), imported


def _tiny_training(loggers) -> list[dict]:
    model = torch.nn.Linear(3, 1, bias=False)
    settings = LoopSettings(epochs=1, batch_size=2, lr=0.1, warmup_ratio=0.0)
    result = train(
        model,
        [ParamGroup("w", [model.weight])],
        lambda prepared, idx, _scope: {"loss": (prepared.weight * len(idx)).pow(2).sum()},
        6,
        settings,
        loggers=loggers,
    )
    return result.log


def test_the_loop_hands_every_log_row_to_the_loggers():
    seen: list[dict] = []
    log = _tiny_training([seen.append])
    assert seen == log and [row["step"] for row in seen] == [1, 2, 3] and "lr/w" in seen[0]


def test_log_to_a_tracker_that_is_not_installed_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install tensorboard"), open_loggers(["tensorboard"], tmp_path, "run", {}):
        pass
    with pytest.raises(UserError, match="choose one of"), open_loggers(["mlflow"], tmp_path, "run", {}):
        pass


def test_wandb_logger_gets_each_step_and_finishes(tmp_path, monkeypatch):
    calls: list[tuple] = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: calls.append(("init", kwargs["name"], kwargs["config"])) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with open_loggers(["wandb"], tmp_path, "train-task/shape-caption", {"lr": 0.1}) as loggers:
        log = _tiny_training(loggers)
    assert calls[0] == ("init", "train-task/shape-caption", {"lr": 0.1}) and calls[-1] == ("finish",)
    assert [(c[1], c[2]["loss"]) for c in calls[1:-1]] == [(row["step"], row["loss"]) for row in log]
    assert all("step" not in c[2] for c in calls[1:-1])


def test_table2_gives_each_methods_training_time_and_peak_memory(run):
    from dmole.stages.figures.matrix import table2_rows
    from dmole.stages.registry import REPORT

    project, _, version = run
    header, rows = table2_rows(read_json(version.file("cl_metrics.json")), read_json(version.file(REPORT.files.costs)))
    shown = {row[0]: dict(zip(header[1:], row[1:])) for row in rows}
    assert "train time" not in version.file("report.md").read_text(encoding="utf-8")  # the machine's, not a result
    assert shown["zero-shot"]["train time"] == "—" and shown["zero-shot"]["peak memory"] == "—"
    for method in METHODS:
        stage = "train-task" if method == "dmole" else f"{method}.train-task"
        summaries = [project.store.latest(stage, task).manifest["summary"] for task in project.config.task_names]
        assert shown[method]["train time"] == f"{sum(s['seconds'] for s in summaries):.0f} s"
        peak = max(s["peak_rss_bytes"] for s in summaries)  # a CPU run: the process's resident set, per stage
        assert shown[method]["peak memory"] == f"{peak / 2**20:.0f} MiB RSS"
        assert 0 < peak < 64 * 2**30


def test_a_retrained_run_with_the_same_weights_brings_its_own_cost_into_the_report(run, tmp_path):
    """Training a task again writes the same content, so the report's inputs stay the same; its time and memory
    differ, and the report must show the latest run's, not stay up to date with the earlier one's."""
    import shutil

    from dmole.artifacts.io import write_json
    from dmole.stages.registry import REPORT

    project, _, _ = run
    copy = Project.open(shutil.copytree(project.root, tmp_path / "ws"))
    first = report(copy)
    latest = copy.store.latest("train-task", copy.config.task_names[0])
    manifest = read_json(latest.path / "manifest.json")
    manifest["summary"]["seconds"] += 1000.0  # what a slower rerun of the same training records
    write_json(latest.path / "manifest.json", manifest)
    again = report(Project.open(copy.root))
    assert again.version.number == first.version.number + 1
    seconds = read_json(again.version.file(REPORT.files.costs))["dmole"]["train_seconds"]
    assert seconds == pytest.approx(read_json(first.version.file(REPORT.files.costs))["dmole"]["train_seconds"] + 1000)


def test_run_settings_list_every_training_run_of_every_method(run):
    """Each method's train-task runs appear with their global batch, and every evaluated task with its grader."""
    project, _, version = run
    settings = read_json(version.file("cl_metrics.json"))["run_settings"]
    stages = {"train-task" if method == "dmole" else f"{method}.train-task" for method in METHODS}
    expected = {f"{stage} {task}" for stage in stages for task in project.config.task_names}
    assert {t["run"] for t in settings["training"]} == expected
    for shown in settings["training"]:
        stage, task = shown["run"].split()
        loop = project.store.latest(stage, task).manifest["config"]["loop"]
        assert (shown["global_batch"], shown["grad_accum"]) == (loop["batch_size"], loop["grad_accum"])
    assert {g["task"] for g in settings["graders"]} == set(project.config.task_names)
    assert "## Run settings" in version.file("report.md").read_text(encoding="utf-8")
