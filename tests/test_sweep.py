"""`dmole sweep`: a method at each value of one hyperparameter, selected on the validation sets only."""

from __future__ import annotations

import json

import pytest

from dmole.stages.errors import UserError
from dmole.stages.methods import get_method
from dmole.stages.registry import SWEEP
from dmole.stages.sweep import parse_grid, relative_scores, selected_index


def test_a_grid_is_read_as_the_method_s_hyperparameters():
    lwf = get_method("lwf-lora")
    assert parse_grid("weight=0.1, 1,10", lwf).values == (0.1, 1, 10)
    assert parse_grid(None, lwf).parameter == "weight"  # the method's own default grid
    with pytest.raises(UserError, match="has no hyperparameter 'wieght'"):
        parse_grid("wieght=1,2", lwf)
    with pytest.raises(UserError, match="KEY=V1,V2"):
        parse_grid("weight=", lwf)
    with pytest.raises(UserError, match="declares no hyperparameter to sweep"):
        parse_grid(None, get_method("seq-lora"))


def test_selection_weighs_every_task_alike_whatever_its_scale():
    """Task a is CIDEr-like (hundreds), task b accuracy: the value that keeps b wins, though a's Last is higher."""
    points = [
        {"validation": {"last_row": {"a": 600.0, "b": 10.0}}},
        {"validation": {"last_row": {"a": 500.0, "b": 90.0}}},
        {"validation": {"last_row": {"a": 500.0, "b": 90.0}}},
    ]
    assert relative_scores(points, "validation") == pytest.approx(
        [(1 + 10 / 90) / 2, (500 / 600 + 1) / 2, (500 / 600 + 1) / 2]
    )
    assert selected_index(points) == 1  # the tie goes to the earlier value


def test_a_sweep_selects_on_validation_and_leaves_the_workspace_s_own_runs_alone(micro_bench, tmp_path):
    from conftest import MICRO_STAGES
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project
    from dmole.stages.sweep import sweep

    root = tmp_path / "ws"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=["color-vqa", "shape-choice"],
        stages=MICRO_STAGES,
    )
    project = Project.open(root)
    result = sweep(project, {"method": "lwf-lora", "grid": "weight=0,100"})
    swept = json.loads(result.version.file(SWEEP.files.result).read_text())
    assert [p["value"] for p in swept["points"]] == [0, 100]
    for point in swept["points"]:  # zero-shot and two stages on test; both tasks scored on validation
        assert len(point["test"]["matrix"]) == 3 and point["hyper"]["weight"] == point["value"]
        assert set(point["validation"]["last_row"]) == {"color-vqa", "shape-choice"}
    # the points trained in scratch workspaces, now removed: the workspace has no lwf-lora artifacts of its own
    assert not (root / "lwf-lora.train-task").exists()
    assert not [path for path in (root / ".runs" / "sweep").rglob("*") if path.is_file()]
    assert sweep(project, {"method": "lwf-lora", "grid": "weight=0,100"}).up_to_date


def test_a_sweep_needs_validation_sets(make_project):
    from dmole.stages.project import Project, write_workspace
    from dmole.stages.sweep import sweep

    project = make_project()
    config = project.config.model_copy(
        update={"tasks": [t.model_copy(update={"val": None}) for t in project.config.tasks]}
    )
    write_workspace(project.root, config)
    with pytest.raises(UserError, match="has no validation set"):
        sweep(Project.open(project.root), {"method": "lwf-lora"})


def test_the_selected_value_is_validation_s_choice_even_where_test_prefers_another(make_project, monkeypatch):
    import dmole.stages.sweep as module

    def fake_point(_project, _folder, _method, hyper, _progress):  # called as _run_point is, positionally
        good = hyper["weight"] == 10  # validation prefers 10, test prefers 1
        return {
            "test": {
                "last": 0.0,
                "avg_seen": 0.0,
                "bwt": 0.0,
                "matrix": [],
                "last_row": {"color-vqa": 10.0 if good else 90.0},
            },
            "validation": {"last_row": {"color-vqa": 90.0 if good else 10.0}},
        }

    monkeypatch.setattr(module, "_run_point", fake_point)
    result = module.sweep(make_project(), {"method": "lwf-lora", "grid": "weight=1,10"})
    swept = json.loads(result.version.file(SWEEP.files.result).read_text())
    assert swept["selected"] == 10 and result.version.manifest["summary"]["selected"] == {"weight": 10}


def test_the_report_s_sweep_table_lists_every_value_and_marks_the_selected_one(make_project, monkeypatch, tmp_path):
    import dmole.stages.sweep as module
    from dmole.stages.figures import sweeps

    def fake_point(project, _folder, _method, hyper, _progress):
        weight = hyper["weight"]
        names = project.config.task_names
        return {
            "test": {
                "last": 10.0 * weight,
                "avg_seen": 5.0 * weight,
                "bwt": -weight,
                "matrix": [],
                "last_row": {n: 10.0 * weight for n in names},
            },
            "validation": {"last_row": {n: 90.0 if weight == 2 else 10.0 for n in names}},
        }

    monkeypatch.setattr(module, "_run_point", fake_point)
    project = make_project()
    assert sweeps.gather(project) is None  # no sweep, no section
    version = module.sweep(project, {"method": "lwf-lora", "grid": "weight=1,2,3"}).version
    data, used = sweeps.gather(project)
    assert used == [version]
    lines = sweeps.table(data)
    header = next(line for line in lines if line.startswith("| method"))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| lwf-lora")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [dict(zip(columns, row)) for row in cells]
    assert [r["value"] for r in rows] == ["weight=1", "weight=2", "weight=3"]
    assert [r["selected"] for r in rows] == ["", "✓", ""]
    for row, weight in zip(rows, (1, 2, 3)):
        assert (float(row["Last"]), float(row["AVG"]), float(row["BWT"])) == (10.0 * weight, 5.0 * weight, -weight)
        assert float(row["color-vqa"]) == 10.0 * weight
    sweeps.plot(data, tmp_path / sweeps.NAME)
    assert (tmp_path / sweeps.NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
