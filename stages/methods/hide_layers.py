"""HiDe-LLaVA's decoupled model and task matching (heavy: torch). The method, and the sources, are `hide.py`."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from dmole.artifacts.io import read_json

from ..errors import UserError
from .lora import SIDECAR, expert_folder, expert_model

PREFIX = "base_model.model."


def last_layer(adapter) -> set[str]:
    """The projections of the LLM's last layer: where HiDe keeps the tasks' LoRAs apart."""
    language = [c for c in adapter.candidates(include_mlp=True) if c.tower == "language"]
    last = max(c.layer for c in language)
    return {c.name for c in language if c.layer == last}


def lora_pairs(version) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module -> (A, B) of a train-task artifact's saved LoRA."""
    tensors = load_file(expert_folder(version) / "adapter_model.safetensors")
    return {
        k[len(PREFIX) : -len(".lora_A.weight")]: (a, tensors[k.replace(".lora_A.", ".lora_B.")])
        for k, a in tensors.items()
        if k.endswith(".lora_A.weight")
    }


def scaling(versions: list) -> float:
    """alpha / rank, which HiDe's tasks share (one LoRA config split among them)."""
    scales = {(s["alpha"], s["rank"]) for s in (read_json(expert_folder(v) / SIDECAR) for v in versions)}
    if len(scales) != 1:
        raise ValueError(f"HiDe fuses LoRAs of one alpha and rank; these have {sorted(scales)}")
    alpha, rank = scales.pop()
    return alpha / rank


def decoupled_model(project, adapter, versions: list):
    """The base with tasks 1..t's LoRAs (``versions``) fused into every layer but the LLM's last,
    W + s (sum B)(sum A), and loaded as experts, to be weighted per sample, in that last layer only (elsewhere
    their B is zero: the fused update is in the weights)."""
    last, scale = last_layer(adapter), scaling(versions)
    pairs = [lora_pairs(v) for v in versions]
    modules = dict(adapter.model.named_modules())
    with torch.no_grad():
        for name in set().union(*pairs) - last:
            a = sum(p[name][0].float() for p in pairs if name in p)
            b = sum(p[name][1].float() for p in pairs if name in p)
            weight = modules[name].weight
            weight += (scale * b @ a).to(weight.device, weight.dtype)
    experts = expert_model(project, adapter, loaded=dict(enumerate(versions, 1)))
    with torch.no_grad():
        for name, param in experts.model.named_parameters():
            module = name.split(".lora_B.")[0].removeprefix(PREFIX)
            if ".lora_B." in name and module not in last:
                param.zero_()
    return experts


def task_matching(
    project, learnt: list[str], task: str, samples: list, split: str, temperature: float
) -> list[dict[int, float]]:
    """Per sample of ``task`` (its ``split`` embeddings), each learnt task's weight: softmax over tasks of the mean
    of the cosines of its vision and language features with the task's anchors (mean training features)."""
    from ..dmole.bank import load_embeddings, require_embeddings

    def parts(matrix: np.ndarray, metadata: dict) -> tuple[np.ndarray, np.ndarray]:
        d_vision = int(metadata["d_vision"])
        return matrix[:, :d_vision], matrix[:, d_vision:]

    def cosines(rows: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        return (rows @ anchors.T) / (np.linalg.norm(rows, axis=1)[:, None] * np.linalg.norm(anchors, axis=1)[None])

    anchors = [
        [part.mean(0) for part in parts(*load_embeddings(require_embeddings(project, name), "train")[1:])]
        for name in learnt
    ]
    ids, matrix, metadata = load_embeddings(require_embeddings(project, task), split)
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    if any(s.id not in position for s in samples):
        raise UserError(
            f"the {split} embeddings of '{task}' do not cover its {split} file; re-run `dmole embed --task {task}`"
        )
    vision, language = parts(matrix[[position[s.id] for s in samples]], metadata)
    similarity = (
        cosines(vision, np.stack([a[0] for a in anchors])) + cosines(language, np.stack([a[1] for a in anchors]))
    ) / 2
    weights = torch.softmax(torch.tensor(similarity) / temperature, dim=1).tolist()
    return [{k: w for k, w in enumerate(row, 1)} for row in weights]
