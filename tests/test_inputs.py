"""The input pipeline: inputs built in worker processes train exactly what inputs built inline train."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from dmole.artifacts.io import read_parquet
from dmole.stages.options import TrainTaskOptions
from dmole.stages.train_task import train_task
from dmole.stages.training.inputs import InputPipeline


def test_workers_train_the_same_batches_in_the_same_order_to_the_same_weights(make_project):
    project = make_project("inputs")
    task = project.config.task_names[0]
    inline = train_task(project, task, TrainTaskOptions(method="seq-lora", input_workers=0, grad_accum=2))
    workers = train_task(project, task, TrainTaskOptions(method="seq-lora", input_workers=2, grad_accum=2), force=True)
    assert inline.version.manifest["config_hash"] == workers.version.manifest["config_hash"]  # speed only
    weights = [load_file(r.version.file("expert/adapter_model.safetensors")) for r in (inline, workers)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    logs = [read_parquet(r.version.file("train_log.parquet")).to_pydict() for r in (inline, workers)]
    assert logs[0]["loss"] == logs[1]["loss"]


def test_the_pipeline_yields_every_micro_batch_in_order_and_counts_the_wait():
    micros = [[3, 1], [0], [2, 4, 5]]
    for workers in (0, 2):
        pipeline = InputPipeline(lambda indices: {"ids": torch.tensor(indices)}, lambda t: t, workers)
        assert [b["ids"].tolist() for b in pipeline.batches(micros)] == micros
        assert pipeline.waited > 0
