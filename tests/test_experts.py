"""Per-sample expert sets (spec/dmole.md §7): a mixed batch equals each sample alone; freezing holds."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dmole.stages.dmole.experts import ExpertModel, LoraSettings
from dmole.stages.methods.lora import towers
from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava", seed=3)


@pytest.fixture
def adapter(tiny_folder):
    return load_family(tiny_folder)  # a fresh model: PEFT injects its layers in place


def _examples():
    colours = ((200, 30, 30), (30, 200, 30), (30, 30, 200))
    return [
        ChatExample(Image.new("RGB", (32, 32), c), [(f"<image>\nquestion {i}?", f"answer {i}")])
        for i, c in enumerate(colours)
    ]


def _experts(adapter) -> ExpertModel:
    names = [c.name for c in adapter.candidates()]
    experts = ExpertModel(adapter.model, towers(adapter))
    experts.add_expert(1, names[::2], LoraSettings(8, 16, 0.05))
    experts.add_expert(2, names[1::3], LoraSettings(8, 16, 0.05))
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero; make both experts change the output
        for name, param in experts.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    experts.model.eval()
    return experts


def test_mixed_expert_sets_equal_each_sample_alone(adapter):
    experts = _experts(adapter)
    examples = _examples()
    routes = [(1,), (1, 2), ()]
    batch = adapter.train_batch(examples)
    with torch.no_grad(), experts.routed(routes):
        together = experts.model(**batch).logits
    for i, (example, route) in enumerate(zip(examples, routes)):
        alone_batch = adapter.train_batch([example])
        with torch.no_grad(), experts.routed([route]):
            alone = experts.model(**alone_batch).logits[0]
        length = alone.shape[0]
        assert torch.allclose(together[i, :length], alone, atol=1e-5), route
    with torch.no_grad(), experts.routed([(1,), (2,), (1, 2)]):
        different = experts.model(**batch).logits
    assert not torch.allclose(different[1], together[1], atol=1e-3)  # the experts really act


def test_only_the_training_task_stays_trainable_after_routing(adapter):
    experts = _experts(adapter)
    trainable = experts.freeze_all_but(2)
    with experts.routed([(1, 2)] * 3):
        pass
    now = [p for p in experts.model.parameters() if p.requires_grad]
    assert experts.training_task == 2
    assert sum(p.numel() for p in now) == sum(p.numel() for p in trainable)
    assert all(".task_2." in name for name, p in experts.model.named_parameters() if p.requires_grad)


def test_forward_outside_routing_is_an_error(adapter):
    experts = _experts(adapter)
    with pytest.raises(RuntimeError, match="outside `routed"):
        experts.model(**adapter.train_batch(_examples()[:1]))


def test_weighted_routes_scale_each_expert(adapter):
    experts = _experts(adapter)
    batch = adapter.train_batch(_examples())
    with torch.no_grad():
        with experts.routed([(1, 2), (1,), ()]):
            plain = experts.model(**batch).logits
        with experts.routed([{1: 1.0, 2: 1.0}, {1: 1.0}, {}]):
            assert torch.equal(experts.model(**batch).logits, plain)  # weight 1 is the plain route
        with experts.routed([{1: 0.5, 2: 0.5}, {1: 0.0}, {}]):
            weighted = experts.model(**batch).logits
        with experts.routed([(), (), ()]):
            base = experts.model(**batch).logits
    assert torch.equal(weighted[1], base[1]) and torch.equal(weighted[2], base[2])
    assert not torch.allclose(weighted[0], plain[0], atol=1e-3) and not torch.allclose(weighted[0], base[0], atol=1e-3)
