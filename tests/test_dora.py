"""DoRA experts (``--expert-type dora``): each routed expert computes what PEFT's own DoRA layer computes, two
routed on a sample add their outputs, and D-MoLE and the LoRA baselines train, save and reload them."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image

from dmole.artifacts.io import read_json
from dmole.stages.dmole.experts import ExpertModel, LoraSettings
from dmole.stages.methods.lora import towers
from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny
from tests.test_qkv_group import internvl2  # noqa: F401  (the fixture, requested below by name: F811 there)

DORA = LoraSettings(rank=4, alpha=8, dropout=0.0, dora=True)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny("llava", tmp_path_factory.mktemp("tiny") / "llava", seed=5)


def nudge(model: torch.nn.Module, seed: int) -> None:
    """Make every expert change its layer's output: B away from zero, the magnitudes away from ||W||."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.rand_like(param))


def batch(adapter) -> dict:
    colours = ((200, 30, 30), (30, 200, 30))
    examples = [
        ChatExample(Image.new("RGB", (32, 32), c), [(f"<image>\nquestion {i}?", f"answer {i}")])
        for i, c in enumerate(colours)
    ]
    return adapter.train_batch(examples)


def test_a_routed_dora_expert_is_peft_dora_layer_and_unrouted_samples_see_the_base(tiny_folder, tmp_path):
    adapter = load_family(tiny_folder)
    modules = [c.name for c in adapter.candidates(include_mlp=True)][::3]
    experts = ExpertModel(adapter.model, towers(adapter))
    params = experts.add_expert(1, modules, DORA)
    linears = dict(load_family(tiny_folder).model.named_modules())
    assert sum(p.numel() for p in params) == sum(
        4 * (linears[m].in_features + linears[m].out_features) + linears[m].out_features for m in modules
    )
    nudge(experts.model, 0)
    experts.model.save_pretrained(tmp_path / "saved", selected_adapters=["task_1"])
    inputs = batch(adapter)
    experts.model.eval()
    with torch.no_grad(), experts.routed([(1,), ()]):
        ours = experts.model(**inputs).logits
    # PEFT alone: the saved folder on a fresh model, no routing
    peft_model = PeftModel.from_pretrained(load_family(tiny_folder).model, tmp_path / "saved" / "task_1").eval()
    assert peft_model.peft_config["default"].use_dora
    base = load_family(tiny_folder).model.eval()
    with torch.no_grad():
        theirs, plain = peft_model(**inputs).logits, base(**inputs).logits
    assert torch.allclose(ours[0], theirs[0], atol=1e-5)
    assert torch.allclose(ours[1], plain[1], atol=1e-5)
    assert not torch.allclose(theirs[0], plain[0], atol=1e-3)  # the expert does change the output


def test_two_routed_dora_experts_add_what_each_peft_dora_layer_adds():
    torch.manual_seed(1)
    base = torch.nn.Sequential(torch.nn.Linear(12, 10))
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    x = torch.randn(3, 12)
    experts = ExpertModel(base, {"0": "language"})
    for task_id in (1, 2):
        experts.add_expert(task_id, ["0"], DORA)
    nudge(experts.model, 2)
    experts.model.eval()
    with torch.no_grad(), experts.routed([(1, 2), (1,), ()]):
        ours = experts.model(x)
    plain = torch.nn.functional.linear(x, weights["0.weight"], weights["0.bias"])
    deltas = []
    for task_id in (1, 2):  # each expert on its own PEFT DoRA layer, from its weights
        layer = torch.nn.Sequential(torch.nn.Linear(12, 10))
        layer.load_state_dict(weights)
        alone = get_peft_model(layer, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], use_dora=True))
        own = {
            k.replace(f".task_{task_id}.", ".default."): v
            for k, v in experts.model.state_dict().items()
            if f".task_{task_id}." in k
        }
        missing = alone.load_state_dict(own, strict=False)
        assert not [k for k in missing.missing_keys if "default" in k]
        alone.eval()
        with torch.no_grad():
            deltas.append(alone(x) - plain)
    assert torch.allclose(ours[0], plain[0] + deltas[0][0] + deltas[1][0], atol=1e-5)
    assert torch.allclose(ours[1], plain[1] + deltas[0][1], atol=1e-5)
    assert torch.allclose(ours[2], plain[2], atol=1e-6)
    assert not torch.allclose(deltas[0], torch.zeros_like(deltas[0]), atol=1e-3)


@pytest.fixture
def two_tasks(micro_bench, tmp_path):
    from conftest import MICRO_STAGES
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    root = tmp_path / "ws"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=["color-vqa", "shape-choice"],
        stages=MICRO_STAGES,
    )
    return Project.open(root)


def test_dmole_allocates_trains_routes_and_reloads_dora_experts(two_tasks):
    from dmole.stages.allocate import allocate
    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.embed import embed
    from dmole.stages.errors import UserError
    from dmole.stages.evaluate import evaluate
    from dmole.stages.fit_router import fit_router
    from dmole.stages.methods import get_method
    from dmole.stages.methods.lora import expert_folder, expert_model
    from dmole.stages.train_task import train_task
    from dmole.stages.training.chat import chat_examples
    from dmole.stages.zc_score import zc_score

    names = two_tasks.config.task_names
    for task in names:
        embed(two_tasks, task)
        fit_router(two_tasks, task)
        zc_score(two_tasks, task)
        lora = read_json(allocate(two_tasks, task).version.file("arch.json"))
        arch = read_json(allocate(two_tasks, task, {"expert_type": "dora"}).version.file("arch.json"))
        assert arch["expert_type"] == "dora"
        model = two_tasks.load_model()
        sizes = {c.name: c for fuse in (False, True) for c in model.candidates(include_mlp=True, fuse=fuse)}
        # the budget pays for each module's magnitudes too (d_out parameters)
        assert arch["expert_parameters"] == sum(
            8 * (sizes[m].d_in + sizes[m].d_out) + sizes[m].d_out for m in arch["selected"]
        )
        assert len(arch["selected"]) <= len(lora["selected"])
    with pytest.raises(UserError, match="allocated dora experts, not lora"):
        train_task(two_tasks, names[0], {"expert_type": "lora"})
    for task in names:
        result = train_task(two_tasks, task)
        assert (
            result.version.manifest["summary"]["trainable_parameters"]
            == read_json(get_method("dmole").allocation(two_tasks, task).file("arch.json"))["expert_parameters"]
        )
        evaluate(two_tasks, task)
    adapter = load_family(two_tasks.model_path)
    dmole = get_method("dmole")
    experts = expert_model(two_tasks, adapter, loaded={i: dmole.trained(two_tasks, n) for i, n in enumerate(names, 1)})
    samples = load_train_samples(two_tasks.data_root, two_tasks.config.task(names[1]))[:2]
    inputs = adapter.train_batch(chat_examples(samples))
    with torch.no_grad(), experts.routed([(2,), (2,)]):
        ours = experts.model(**inputs).logits
    folder = expert_folder(dmole.trained(two_tasks, names[1]))
    assert json.loads((folder / "adapter_config.json").read_text())["use_dora"]
    alone = PeftModel.from_pretrained(load_family(two_tasks.model_path).model, folder).eval()
    with torch.no_grad():
        theirs = alone(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("method", ["seq-lora", "o-lora"])
def test_lora_baselines_train_dora_adapters(two_tasks, method):
    from dmole.stages.evaluate import evaluate
    from dmole.stages.methods import get_method
    from dmole.stages.methods.lora import SIDECAR, expert_folder
    from dmole.stages.train_task import train_task

    names = two_tasks.config.task_names
    for task in names:
        train_task(two_tasks, task, {"method": method, "expert_type": "dora"})
    evaluate(two_tasks, names[1], {"method": method})
    folder = expert_folder(get_method(method).trained(two_tasks, names[1]))
    assert read_json(folder / SIDECAR)["expert_type"] == "dora"
    loaded = PeftModel.from_pretrained(load_family(two_tasks.model_path).model, folder)
    assert any("lora_magnitude_vector" in name for name, _ in loaded.named_parameters())


def test_a_dora_expert_on_a_fused_qkv_group_shares_a_and_is_pefts_dora_on_each_member(internvl2, tmp_path):  # noqa: F811
    from dmole.stages.methods.lora import groups

    _, out = internvl2
    adapter = load_family(out, device="cpu", max_tiles=1)
    qkv = [c for c in adapter.candidates(fuse=True) if c.kind == "qkv"][:2]
    experts = ExpertModel(adapter.model, towers(adapter), groups=groups(adapter))
    params = experts.add_expert(1, [c.name for c in qkv], DORA)
    # one A per group, one B and one magnitude per member: r (d_in + d_out) + d_out of the fused projection
    assert sum(p.numel() for p in params) == sum(4 * (c.d_in + c.d_out) + c.d_out for c in qkv)
    nudge(experts.model, 3)
    experts.model.save_pretrained(tmp_path / "saved", selected_adapters=["task_1"])
    inputs = batch(adapter)
    experts.model.eval()
    with torch.no_grad(), experts.routed([(1,), (1,)]):
        ours = experts.model(**inputs).logits
    alone = PeftModel.from_pretrained(
        load_family(out, device="cpu", max_tiles=1).model, tmp_path / "saved" / "task_1"
    ).eval()
    with torch.no_grad():
        theirs = alone(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_the_expert_type_enters_a_config_hash_only_where_it_changes_what_is_computed():
    from dmole.stages.options import AllocateOptions, TrainTaskOptions, hashed

    for model in (AllocateOptions, TrainTaskOptions):
        # what these stages hashed before the option existed: the same workspace stays up to date after an upgrade
        before = {
            k: v for k, v in model().model_dump().items() if k not in ("expert_type", "dropout_mask", "input_workers")
        }
        assert hashed(model()) == before
        assert hashed(model(expert_type="dora"))["expert_type"] == "dora"
    assert "expert_type" not in hashed(TrainTaskOptions(expert_type="lora"))
