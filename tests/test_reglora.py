"""RegLoRA (SEFE): each task's key elements are the largest 2% of its update B A, added to the earlier ones; a later
task's LoRA is penalised by its mean magnitude there. Checked against numpy on the saved adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_STAGES
from dmole.stages.init import create_workspace
from dmole.stages.methods import get_method
from dmole.stages.methods.lora import expert_folder
from dmole.stages.methods.reglora_layers import KEYS, key_elements
from dmole.stages.project import Project
from dmole.stages.train_task import train_run, train_task

TASKS = ["color-vqa", "shape-choice"]


def top_positions(update: np.ndarray, k: int) -> set[tuple[int, int]]:
    order = np.argsort(-np.abs(update), axis=None)[:k]
    return {tuple(int(i) for i in np.unravel_index(f, update.shape)) for f in order}


def test_key_elements_are_the_largest_share_of_the_update():
    update = np.random.default_rng(0).normal(size=(6, 7))
    keys = key_elements(torch.tensor(update), 0.1)  # int(0.1 * 42) = 4
    assert len(keys) == 4 and {tuple(k) for k in keys.tolist()} == top_positions(update, 4)


@pytest.fixture
def two_tasks(micro_bench, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=TASKS, stages=MICRO_STAGES
    )
    return Project.open(root)


def saved_updates(version) -> dict[str, np.ndarray]:
    """Each module's B A, read from the artifact's PEFT file."""
    tensors = load_file(expert_folder(version) / "adapter_model.safetensors")
    prefix = "base_model.model."
    return {
        k[len(prefix) : -len(".lora_A.weight")]: (tensors[k.replace("lora_A", "lora_B")] @ v).double().numpy()
        for k, v in tensors.items()
        if k.endswith("lora_A.weight")
    }


def test_a_later_task_is_penalised_at_the_earlier_tasks_key_elements(two_tasks):
    options = {"method": "reglora", "hparams": {"weight": 100.0}}
    train_task(two_tasks, TASKS[0], options)
    first = get_method("reglora").trained(two_tasks, TASKS[0])
    keys = load_file(first.file(KEYS))
    updates = saved_updates(first)
    assert set(keys) == set(updates)
    for module, update in updates.items():
        k = int(0.02 * update.size)
        assert len(keys[module]) == k
        chosen = {tuple(p) for p in keys[module].tolist()}
        # the chosen positions hold the k largest magnitudes (ties aside)
        assert np.allclose(
            sorted(np.abs(update[tuple(np.array(list(chosen)).T)])), sorted(np.abs(update).flatten())[-k:], rtol=1e-5
        )

    method, run, _ = train_run(two_tasks, TASKS[1], options)
    trainer = method.trainer(run, two_tasks.load_model())
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if ".lora_B." in name and f".{trainer.name}." in name:
                param.normal_(0, 0.1)
    batch = trainer.adapter.on_device(trainer.inputs([0, 1]))
    with trainer.route([0, 1], batch):
        outputs = trainer.model(**batch)
        term = trainer.extra_losses(trainer.model, batch, outputs, None)["reg"]
    expected = 0.0
    for module in trainer.modules:
        layer = trainer.model.get_submodule(f"base_model.model.{module}")
        update = (layer.lora_B[trainer.name].weight @ layer.lora_A[trainer.name].weight).detach().double().numpy()
        rows, cols = keys[module][:, 0].numpy(), keys[module][:, 1].numpy()
        expected += np.abs(update[rows, cols]).mean()
    assert term.item() == pytest.approx(100.0 * expected, rel=1e-5)
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.params)

    second = train_task(two_tasks, TASKS[1], options).version
    grown = load_file(second.file(KEYS))
    for module, update in saved_updates(second).items():
        k = int(0.02 * update.size)
        assert len(grown[module]) == k + len(keys[module])
        assert torch.equal(grown[module][k:], keys[module])  # the earlier tasks' after its own, as SEFE concatenates
