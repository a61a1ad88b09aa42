"""How each method's model looks at a given stage, built from the workspace's trained adapters.

- ``dmole``: the base plus task experts 1..t (unmerged, routed per sample). Its ablations ``dmole-<rule>``
  are the same with another allocation rule (vision-only, language-only, pooled, uniform).
- ``seq-lora``: the base with stage adapters 1..t merged in order (one model, no routing).
- ``finetune``: the base plus task i's own adapter, for task i only (oracle routing).
- ``joint``: the base plus the one adapter trained on every task.
"""

from __future__ import annotations

from pathlib import Path

import torch

from artifacts import Version

from .dmole.experts import ExpertModel, LoraSettings
from .naming import method_flag, stage_name
from .project import Project

BASELINE_LORA = LoraSettings(rank=4, alpha=8, dropout=0.05)
JOINT_TASK = "all"
EXPERT_FOLDER = "expert"


def towers(adapter) -> dict[str, str]:
    """Tower of every attention and MLP projection: where any expert or baseline adapter may sit."""
    return {c.name: c.tower for c in adapter.candidates(include_mlp=True)}


def expert_folder(version: Version) -> Path:
    version.file(f"{EXPERT_FOLDER}/adapter_model.safetensors")  # checksum-verified before PEFT reads it
    return version.path / EXPERT_FOLDER


def trained(project: Project, method: str, task: str) -> Version:
    stage = stage_name("train-task", method)
    return project.store.require(stage, task, hint=f"dmole train-task --task {task}{method_flag(method)}")


def dmole_model(project: Project, adapter, upto: int, method: str = "dmole") -> tuple[ExpertModel, list[Version]]:
    """Base + experts of tasks 1..upto of D-MoLE (or one of its ablations), all frozen."""
    experts = ExpertModel(adapter.model, towers(adapter), str(project.model_path))
    versions = [trained(project, method, name) for name in project.config.task_names[:upto]]
    for task_id, version in enumerate(versions, start=1):
        experts.load_expert(task_id, expert_folder(version))
    return experts, versions


def merged_model(project: Project, adapter, upto: int) -> tuple[torch.nn.Module, list[Version]]:
    """seq-lora's stage model: the base with adapters 1..upto merged into the weights, in order (fp32)."""
    from peft import PeftModel

    model = adapter.model
    versions = [trained(project, "seq-lora", name) for name in project.config.task_names[:upto]]
    for version in versions:
        model = PeftModel.from_pretrained(model, expert_folder(version)).merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, versions
