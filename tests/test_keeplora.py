"""KeepLoRA: A is the leading residual of the task's gradient outside the principal subspace, frozen while B
trains; the subspace grows by the energy rule; all against numpy's SVD and hand arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_STAGES
from dmole.stages.init import create_workspace
from dmole.stages.methods import get_method
from dmole.stages.methods.keeplora_layers import SUBSPACE, extend_subspace, residual_basis, weight_subspace
from dmole.stages.project import Project
from dmole.stages.train_task import train_run, train_task

TASKS = ["color-vqa", "shape-choice"]


def projector(rows: np.ndarray) -> np.ndarray:
    return rows.T @ rows


def orthonormal(d: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, k)))
    return q  # d x k, orthonormal columns


def test_the_residual_basis_is_the_gradients_leading_directions_outside_the_subspace():
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=(7, 9))  # d_out x d_in
    m = orthonormal(9, 3, 1).T  # 3 orthonormal rows in the input space
    a = residual_basis(torch.tensor(gradient), torch.tensor(m, dtype=torch.float32), 2).double().numpy()
    outside = (np.eye(9) - m.T @ m) @ gradient.T
    u, _, _ = np.linalg.svd(outside)
    assert np.allclose(projector(a), projector(u[:, :2].T), atol=1e-5)
    assert np.allclose(a @ a.T, np.eye(2), atol=1e-5) and np.allclose(a @ m.T, 0, atol=1e-5)


def test_the_subspace_grows_by_the_residuals_directions_until_it_holds_the_energy():
    u, v = orthonormal(6, 4, 2), orthonormal(5, 4, 3)
    gradient = torch.tensor((u @ np.diag([4.0, 3.0, 2.0, 1.0]) @ v.T).T, dtype=torch.float32)  # G^T = U S V^T
    m = torch.tensor(u[:, :1].T, dtype=torch.float32)  # already holds 16 / 30 of the energy
    # 16/30 < 0.9; + 9 -> 25/30 < 0.9; + 4 -> 29/30: two directions added
    grown = extend_subspace(gradient, m, 0.9).double().numpy()
    assert grown.shape == (3, 6) and np.allclose(projector(grown), projector(u[:, :3].T), atol=1e-5)
    assert np.allclose(grown[0], u[:, 0], atol=1e-6)  # M's own rows come first, unchanged
    assert torch.equal(extend_subspace(gradient, m, 0.5), m)  # 16/30 >= 0.5: nothing to add


def test_the_first_subspace_holds_less_than_the_weights_energy():
    u, v = orthonormal(6, 3, 4), orthonormal(5, 3, 5)
    weight = torch.tensor((u @ np.diag([3.0, 2.0, 1.0]) @ v.T).T, dtype=torch.float32)  # W^T = U S V^T
    # cumulative shares 9/14, 13/14, 1: how many stay below the threshold (at least one)
    for energy, rows in ((0.6, 1), (0.9, 1), (0.95, 2)):
        m = weight_subspace(weight, energy).double().numpy()
        assert np.allclose(projector(m), projector(u[:, :rows].T), atol=1e-5), energy


@pytest.fixture
def two_tasks(micro_bench, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=TASKS, stages=MICRO_STAGES
    )
    return Project.open(root)


def test_keeplora_fixes_a_to_the_residual_of_the_merged_models_gradient_and_trains_b(two_tasks):
    from peft import PeftModel

    from dmole.stages.methods.lora import expert_folder
    from dmole.stages.models.registry import load_family

    options = {"method": "keeplora", "hparams": {"rank": 8, "gradient_ratio": 0.25}}
    train_task(two_tasks, TASKS[0], options)
    first = get_method("keeplora").trained(two_tasks, TASKS[0])
    method, run, _ = train_run(two_tasks, TASKS[1], options)
    trainer = method.trainer(run, two_tasks.load_model())
    module = trainer.modules[5]
    # independently: task 1's folder merged into a fresh model, the mean gradient over the evenly spaced samples
    merged = (
        PeftModel.from_pretrained(load_family(two_tasks.model_path).model, expert_folder(first))
        .merge_and_unload()
        .eval()
    )
    weight = merged.get_submodule(module).weight
    weight.requires_grad_(True)
    picked = np.linspace(0, len(run.samples) - 1, int(len(run.samples) * 0.25)).astype(int)
    total = torch.zeros_like(weight)
    for i in picked:
        merged(**trainer.inputs([int(i)])).loss.backward()
        total += weight.grad
        weight.grad = None
    gradient = (total / len(picked)).T.double().numpy()  # d_in x d_out
    m = load_file(first.file(SUBSPACE))[module].double().numpy()
    u, _, _ = np.linalg.svd((np.eye(len(m.T)) - m.T @ m) @ gradient)
    a = trainer.layer(module).lora_A[trainer.name].weight.detach().double().numpy()
    assert np.allclose(projector(a), projector(u[:, :8].T), atol=1e-4)
    assert (
        all(
            ".lora_A." not in name
            for name, p in trainer.model.named_parameters()
            if any(p is q for q in trainer.params)
        )
        and trainer.params
    )

    result = train_task(two_tasks, TASKS[1], options)
    saved = load_file(expert_folder(result.version) / "adapter_model.safetensors")
    a_saved = next(v for k, v in saved.items() if f"{module}.lora_A" in k).double().numpy()
    b_saved = next(v for k, v in saved.items() if f"{module}.lora_B" in k)
    assert np.allclose(a_saved, a, atol=1e-5) and b_saved.abs().sum() > 0  # A kept, B learned
    grown = load_file(result.version.file(SUBSPACE))[module].double().numpy()
    assert len(grown) >= len(m) and np.allclose(grown[: len(m)], m, atol=1e-6)
    assert np.allclose(grown @ grown.T, np.eye(len(grown)), atol=1e-4)
