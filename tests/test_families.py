"""Every family end to end through the CLI, on tiny checkpoints written by transformers' save_pretrained in
the current and the older hub layout: init -> embed -> fit-router -> zc-score -> allocate -> train-task ->
eval for two tasks."""

from __future__ import annotations

import pytest

from conftest import PIPELINE_TASKS
from dmole.artifacts.io import read_json, read_parquet
from dmole.stages.models.catalog import MODEL_TYPES
from dmole.stages.models.tiny import LAYOUTS, TinySize, build_tiny

SIZE = TinySize(lm_layers=2, vision_layers=2, lm_hidden=64, lm_intermediate=128)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", list(MODEL_TYPES))
def test_every_stage_runs_on_the_family(family, layout, run_cli_pipeline, tmp_path):
    workspace = run_cli_pipeline(build_tiny(family, tmp_path / "model", size=SIZE, layout=layout), tmp_path / "ws")
    first, last = PIPELINE_TASKS
    arch = read_json(next((workspace / "allocate" / last).glob("v*/arch.json")))
    assert arch["n_vision"] > 0 and arch["n_language"] > 0
    scores = read_parquet(next((workspace / "eval" / last).glob("v*/scores.parquet"))).to_pydict()
    assert sorted(scores["task"]) == sorted(PIPELINE_TASKS)
    predictions = read_parquet(next((workspace / "eval" / last).glob(f"v*/predictions/{first}.parquet")))
    assert predictions.num_rows == 2
