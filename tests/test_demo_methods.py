"""The demo's ``--methods`` names the methods 2026's tables add (the group ``recent``), and its pipeline runs
them into one report."""

from __future__ import annotations

import pytest

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_json
from dmole.stages.demo import demo_methods, run_pipeline
from dmole.stages.errors import UserError
from dmole.stages.init import create_workspace
from dmole.stages.method_groups import RECENT, TABLE2
from dmole.stages.project import Project

FAST = {
    "keeplora": {"rank": 4, "alpha": 1},
    "mr-lora": {"router_samples": 2, "router_epochs": 1, "router_rank": 4, "router_alpha": 8},
    "replay": {"replay": 3},
    "dmole-replay": {"replay": 3},
}


def test_methods_are_named_one_by_one_or_by_group():
    assert demo_methods("table2,recent") == TABLE2 + RECENT
    assert set(RECENT) == {"replay", "dmole-replay", "mr-lora", "keeplora", "reglora", "hide"}
    assert demo_methods("hide, replay,hide") == ("hide", "replay")
    with pytest.raises(UserError, match="unknown method"):
        demo_methods("recent,sefe")


@pytest.mark.slow  # 60-90 s; each method's own test covers its training and evaluation
def test_the_demo_pipeline_runs_the_recent_methods_into_one_report(micro_bench, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=["color-vqa", "shape-choice"],
        stages=MICRO_STAGES,
        methods=FAST,
    )
    report = run_pipeline(Project.open(root), demo_methods("recent"))
    methods = read_json(report.version.file("cl_metrics.json"))["methods"]
    for name in RECENT:
        assert None not in methods[name]["matrix"][-1], name
    markdown = report.version.file("report.md").read_text()
    assert all(f"| {name} |" in markdown for name in RECENT)
