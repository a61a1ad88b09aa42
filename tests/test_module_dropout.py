"""train-task's ``dropout_mask`` (stages/dmole/module_dropout.py): under ``shared`` the experts of a module see one
dropped input per forward, by default each its own; without dropout both settings compute the same."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dmole.stages.dmole.experts import ExpertModel, LoraSettings
from dmole.stages.dmole.module_dropout import ModuleDropout
from dmole.stages.methods.lora import towers
from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny

P = 0.5  # a high rate, so that two independent masks differ on almost every input for sure


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava", seed=3)


def _batch(adapter):
    examples = [
        ChatExample(Image.new("RGB", (32, 32), c), [(f"<image>\nquestion {i}?", f"answer {i}")])
        for i, c in enumerate(((200, 30, 30), (30, 200, 30)))
    ]
    return adapter.train_batch(examples)


def _experts(tiny_folder, shared: bool, p: float = P):
    """Two experts on the same modules (the first language attention projections), B non-zero so both act."""
    adapter = load_family(tiny_folder)
    modules = [c.name for c in adapter.candidates() if c.tower == "language"][:4]
    experts = ExpertModel(adapter.model, towers(adapter), shared_dropout=shared)
    torch.manual_seed(0)  # the same experts under both settings
    experts.add_expert(1, modules, LoraSettings(8, 16, p))
    experts.add_expert(2, modules, LoraSettings(8, 16, p))
    with torch.no_grad():
        for name, param in experts.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return adapter, experts, modules


def _dropped_inputs(adapter, experts, module: str, forwards: int = 1) -> list[dict[str, torch.Tensor]]:
    """Per forward, what the module's LoRA layer was given (``x``) and what each expert's A read (its dropout's
    output), in training mode with both experts routed into every sample."""
    layer = experts.model.get_submodule(f"base_model.model.{module}")
    seen: list[dict[str, torch.Tensor]] = []

    def keep(key):
        return lambda _module, args: seen[-1].__setitem__(key, args[0].detach().clone())

    handles = [layer.register_forward_pre_hook(lambda _m, args: seen.append({"x": args[0].detach().clone()}))]
    handles += [layer.lora_A[f"task_{i}"].register_forward_pre_hook(keep(i)) for i in (1, 2)]
    batch = _batch(adapter)
    experts.model.train()
    try:
        for _ in range(forwards):
            with experts.routed([(1, 2)] * 2):
                experts.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _is_dropout_of(dropped: torch.Tensor, x: torch.Tensor, p: float) -> bool:
    """Where ``x`` is non-zero (padding rows may be zero), every element of ``dropped`` is 0 or x / (1 - p), and
    about a share p of them is 0."""
    live = x != 0
    kept = (dropped != 0) & live
    scaled = torch.allclose(dropped[kept], x[kept] / (1 - p))
    share = 1 - kept.sum().item() / live.sum().item()
    return bool(live.float().mean() > 0.5) and scaled and abs(share - p) < 0.05


def test_shared_masks_give_a_modules_experts_one_dropped_input_per_forward(tiny_folder):
    adapter, experts, modules = _experts(tiny_folder, shared=True)
    first, second = _dropped_inputs(adapter, experts, modules[0], forwards=2)
    assert torch.equal(first[1], first[2])
    assert _is_dropout_of(first[1], first["x"], P)
    assert not torch.equal(first[1], second[1])  # a new forward draws a new mask
    assert sum(isinstance(m, ModuleDropout) for m in experts.model.modules()) == 2 * len(modules)


def test_per_expert_masks_are_the_default_and_independent(tiny_folder):
    adapter, experts, modules = _experts(tiny_folder, shared=False)
    (seen,) = _dropped_inputs(adapter, experts, modules[0])
    assert not torch.equal(seen[1], seen[2])
    assert _is_dropout_of(seen[1], seen["x"], P) and _is_dropout_of(seen[2], seen["x"], P)
    assert not any(isinstance(m, ModuleDropout) for m in experts.model.modules())


def test_an_expert_added_later_joins_its_modules_shared_mask(tiny_folder):
    adapter, experts, modules = _experts(tiny_folder, shared=True)
    experts.add_expert(3, modules[:1], LoraSettings(8, 16, P))
    (seen,) = _dropped_inputs(adapter, experts, modules[0])
    layer = experts.model.get_submodule(f"base_model.model.{modules[0]}")
    masks = {id(layer.lora_dropout[f"task_{i}"]._masks) for i in (1, 2, 3)}
    assert len(masks) == 1 and torch.equal(seen[1], seen[2])


@pytest.mark.parametrize("p, train", [(0.0, True), (P, False)])
def test_without_dropout_both_settings_compute_the_same(tiny_folder, p, train):
    """Dropout off (rate 0 in training, or any rate in eval mode): the same loss and gradients either way."""
    results = []
    for shared in (False, True):
        adapter, experts, _ = _experts(tiny_folder, shared, p)
        experts.model.train(train)
        with experts.routed([(1, 2), (2,)]):
            loss = experts.model(**_batch(adapter)).loss
        loss.backward()
        grads = [param.grad for param in experts.model.parameters() if param.requires_grad]
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b) > 0 and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_the_option_is_per_expert_by_default_under_the_reference_profile_and_out_of_the_hash_there():
    from dmole.stages.options import TrainTaskOptions, hashed
    from dmole.stages.resolve import REFERENCE_PROFILE

    assert TrainTaskOptions().dropout_mask == "per-expert"
    assert REFERENCE_PROFILE["train-task"]["dropout_mask"] == "per-expert"
    assert "dropout_mask" not in hashed(TrainTaskOptions())
    assert hashed(TrainTaskOptions(dropout_mask="shared"))["dropout_mask"] == "shared"


def test_gradient_checkpointing_recomputes_the_same_shared_mask(tiny_folder):
    """The backward's recomputed forward must drop out what the forward dropped: the same gradients as without
    checkpointing, from the same seed."""
    grads = []
    for checkpointing in (False, True):
        adapter, experts, _ = _experts(tiny_folder, shared=True)
        if checkpointing:
            experts.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        experts.model.train()
        torch.manual_seed(5)
        with experts.routed([(1, 2)] * 2):
            experts.model(**_batch(adapter)).loss.backward()
        grads.append([param.grad for param in experts.model.parameters() if param.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_train_task_hands_the_option_to_dmoles_experts_and_hashes_it_only_when_shared(make_project):
    from dmole.artifacts.io import read_json
    from dmole.stages.allocate import allocate
    from dmole.stages.methods.lora import SIDECAR, expert_folder
    from dmole.stages.train_task import train_run, train_task
    from dmole.stages.zc_score import zc_score

    project = make_project()
    task = project.config.task_names[0]
    zc_score(project, task)
    allocate(project, task)
    for option, shared in (("per-expert", False), ("shared", True)):
        method, run, _ = train_run(project, task, {"dropout_mask": option})
        method.carried(run)
        trainer = method.trainer(run, project.load_model())
        assert any(isinstance(m, ModuleDropout) for m in trainer.model.modules()) == shared
    first = train_task(project, task)
    again = train_task(project, task, {"dropout_mask": "per-expert"})  # the option's old value: same config
    assert again.up_to_date and again.version.path == first.version.path
    shared = train_task(project, task, {"dropout_mask": "shared"})
    assert not shared.up_to_date and shared.version.path != first.version.path
    assert read_json(expert_folder(shared.version) / SIDECAR)["dropout_mask"] == "shared"
