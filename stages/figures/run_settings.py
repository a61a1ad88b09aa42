"""The run's settings, read from the manifests of the artifacts a report is built from: the device, CUDA, torch and
the dtype (`runner.environment`, `runner.device_environment`), each training run's effective global batch
(per device x processes x gradient accumulation, from its loop settings and world size) with the precision its
steps ran in (its ``precision`` setting on its recorded device) and its seed, and the grader each evaluation scored
with (its scores' metric and caption tokenizer).

These are what the field's reproductions could not recover when their numbers disagreed with a paper (issue 28:
graders, batch sizes and hardware). Nothing here depends on when or how long a run took, so report.md stays
byte-identical between two runs of the same command on the same machine.
"""

from __future__ import annotations

from dmole.artifacts import Version
from dmole.artifacts.io import read_parquet

from ..options import trains_in_bf16
from ..registry import EVAL
from .markdown import table as md_table

ENVIRONMENT = ("device_name", "cuda", "torch", "dtype")
LABELS = {"device_name": "device", "cuda": "CUDA", "torch": "torch", "dtype": "dtype (model weights)"}


def _distinct(values) -> list:
    return list(dict.fromkeys(values))


def _training(version: Version) -> dict:
    loop, environment = version.manifest["config"]["loop"], version.manifest["environment"]
    processes, accumulation = environment.get("world_size", 1), loop["grad_accum"]
    device_type = environment.get("device", "cpu").split(":")[0]
    return {
        "run": f"{version.stage} {version.task}",
        "global_batch": loop["batch_size"],
        "per_device": loop["batch_size"] / (processes * accumulation),
        "processes": processes,
        "grad_accum": accumulation,
        "seed": loop["seed"],
        "precision": "bf16" if trains_in_bf16(loop["precision"], device_type) else "fp32",
    }


def _graders(evaluations: list[Version]) -> list[dict]:
    """Each task's metric and caption tokenizer, as its evaluations recorded them."""
    rows = [row for version in evaluations for row in read_parquet(version.file(EVAL.files.scores)).to_pylist()]
    found = _distinct((r["task"], r["metric"], r["tokenizer"] or None) for r in rows)
    return [{"task": task, "metric": metric, "tokenizer": tokenizer} for task, metric, tokenizer in found]


def gather(evaluations: list[Version], trained: list[Version]) -> dict:
    """The settings of the evaluations and training runs a report reads; each environment field lists every
    distinct value its manifests recorded (None where a manifest predates the field)."""
    versions = [*evaluations, *trained]
    return {
        "environment": {key: _distinct(v.manifest["environment"].get(key) for v in versions) for key in ENVIRONMENT},
        "seeds": _distinct(v.manifest["environment"].get("seed") for v in versions),
        "training": [_training(version) for version in trained],
        "graders": _graders(evaluations),
    }


def _text(values: list) -> str:
    return ", ".join("n/a" if value is None else str(value) for value in values) or "n/a"


def _batch(run: dict) -> str:
    return f"{run['global_batch']} = {run['per_device']:g} × {run['processes']} × {run['grad_accum']}"


def table(data: dict) -> list[str]:
    lines = ["## Run settings", "", "As recorded in the manifests of the artifacts this report reads:", ""]
    lines += [f"- {LABELS[key]}: {_text(values)}" for key, values in data["environment"].items()]
    lines += [f"- workspace seed: {_text(data['seeds'])}", ""]
    if data["training"]:
        lines += md_table(
            ["training run", "global batch = per device × processes × accumulation", "training precision", "seed"],
            [[t["run"], _batch(t), t["precision"], str(t["seed"])] for t in data["training"]],
        ) + [""]
    lines += md_table(
        ["task", "grader", "caption tokenizer"],
        [[g["task"], g["metric"], g["tokenizer"] or "—"] for g in data["graders"]],
    ) + [""]
    return lines
