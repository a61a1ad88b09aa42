"""The tiny random model most RoE, resume and launch tests build: a 64-wide language model of a few layers (two
heads, one KV head) on a one-layer vision tower over 16-pixel images; and the RoE tests' workspace on it."""

from __future__ import annotations

from pathlib import Path

from dmole.stages.data.synthetic import SynthSizes, write_benchmark
from dmole.stages.init import create_workspace
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.project import Project


def small_lm(lm_layers: int = 4) -> TinySize:
    return TinySize(
        lm_layers=lm_layers,
        lm_hidden=64,
        lm_heads=2,
        lm_kv_heads=1,
        lm_intermediate=128,
        vision_layers=1,
        vision_hidden=32,
        vision_heads=1,
        vision_intermediate=64,
        image_size=16,
        patch_size=8,
    )


def tiny_roe_inputs(root: Path, size: TinySize) -> None:
    """``root/data``: four training and two test samples a task of the synthetic benchmark; ``root/model``: a tiny
    LLaVA of ``size``."""
    write_benchmark(root / "data", sizes=SynthSizes(image_size=16, train_per_task=4, test_per_task=2))
    build_tiny("llava", root / "model", size=size)


def tiny_roe_project(root: Path, size: TinySize, route_train: dict | None = None) -> Project:
    """A workspace over `tiny_roe_inputs`, with ``route_train`` as its route-train defaults."""
    tiny_roe_inputs(root, size)
    stages = {"stages": {"route-train": route_train}} if route_train else {}
    create_workspace(root / "ws", model=root / "model", data=root / "data", seed=0, **stages)
    return Project.open(root / "ws")
