"""The methods of issue 29 on the tiny transformers-written folder of every family (LLaVA, InternVL and Qwen2-VL
among them): two tasks trained and evaluated by each, through the stage functions."""

from __future__ import annotations

import pytest

from conftest import PIPELINE_STAGES, PIPELINE_TASKS
from dmole.stages.allocate import allocate
from dmole.stages.embed import embed
from dmole.stages.evaluate import evaluate
from dmole.stages.fit_router import fit_router
from dmole.stages.init import create_workspace
from dmole.stages.models.catalog import MODEL_TYPES
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.project import Project
from dmole.stages.train_task import train_task
from dmole.stages.zc_score import zc_score

SIZE = TinySize(lm_layers=2, vision_layers=2, lm_hidden=64, lm_intermediate=128)
HPARAMS = {
    "replay": {"replay": 2},
    "dmole-replay": {"replay": 2},
    "keeplora": {"rank": 4, "alpha": 1},
    "mr-lora": {"router_samples": 2, "router_epochs": 1, "router_rank": 4, "router_alpha": 8},
    "reglora": {},
    "hide": {},
}


# LLaVA in every run; the other families (InternVL and Qwen2-VL among them, about 20 s each) with the slow tests
CORE = ("llava",)


@pytest.mark.parametrize("family", [f if f in CORE else pytest.param(f, marks=pytest.mark.slow) for f in MODEL_TYPES])
def test_the_new_methods_train_and_evaluate_on_the_family(family, pipeline_data, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root,
        model=build_tiny(family, tmp_path / "model", size=SIZE),
        data=pipeline_data,
        tasks=list(PIPELINE_TASKS),
        stages=PIPELINE_STAGES,
    )
    project = Project.open(root)
    for task in PIPELINE_TASKS:
        embed(project, task)
        fit_router(project, task)
        zc_score(project, task)
        allocate(project, task, {"method": "dmole-replay"})
    for method, hparams in HPARAMS.items():
        for task in PIPELINE_TASKS:
            trained = train_task(project, task, {"method": method, "hparams": hparams})
            assert trained.version.manifest["summary"]["trainable_parameters"] > 0, method
        scores = evaluate(project, PIPELINE_TASKS[-1], {"method": method}).version.manifest["summary"]
        assert all(scores[task] is not None for task in PIPELINE_TASKS), method
