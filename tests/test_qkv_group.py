"""The fused q/k/v candidate on a converted InternVL2 (issue 24): under the reference profile each layer's split q,
k and v count, score, allocate and train as the one fused projection of the remote-code original. Checked against
the official formula (per module, the sum over its parameters of their gradient norms) computed here on the
original's fused tensors with an independent forward, and against a LoRA on those fused tensors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from dmole.artifacts.io import read_json, read_parquet
from dmole.stages.convert import convert_internvl_chat
from dmole.stages.dmole.allocation import ScoredModule
from dmole.stages.dmole.allocation import allocate as allocate_modules
from dmole.stages.dmole.experts import ExpertModel, LoraSettings
from dmole.stages.dmole.shared_lora import SharedDropout
from dmole.stages.init import create_workspace
from dmole.stages.methods.lora import SIDECAR, expert_folder, expert_model, groups, towers
from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.project import Project
from tests.conftest import PIPELINE_TASKS
from tests.test_convert import (
    HEAD_DIM,
    LM,
    VIT,
    reference_image_features,
    reference_internlm2_from_embeddings,
    reference_qkv_rows,
    source_tensors,
    write_remote_checkpoint,
)

torch.set_num_threads(1)

# the remote-code module -> the converted model's candidate standing for it (a group of q, k, v, or the module)
REMOTE_MODULES = {
    **{
        f"language_model.model.layers.{i}.attention.wqkv": f"model.language_model.layers.{i}.self_attn.qkv"
        for i in range(LM["layers"])
    },
    **{
        f"language_model.model.layers.{i}.attention.wo": f"model.language_model.layers.{i}.self_attn.o_proj"
        for i in range(LM["layers"])
    },
    **{
        f"vision_model.encoder.layers.{i}.attn.qkv": f"model.vision_tower.encoder.layer.{i}.attention.qkv"
        for i in range(VIT["layers"])
    },
    **{
        f"vision_model.encoder.layers.{i}.attn.proj": f"model.vision_tower.encoder.layer.{i}.attention.projection_layer"
        for i in range(VIT["layers"])
    },
}


@pytest.fixture(scope="module")
def internvl2(tmp_path_factory):
    root = tmp_path_factory.mktemp("internvl2")
    src = write_remote_checkpoint(root / "InternVL2-tiny")
    return src, convert_internvl_chat(src, root / "native")


def reference_logits(t: dict, batch: dict, image_token_id: int) -> torch.Tensor:
    """InternVLChatModel's forward on one unpadded sample: InternViT + mlp1 features in place of the image
    context tokens, then InternLM2, all on the remote (fused) tensors ``t``."""
    ids = batch["input_ids"][0]
    features = reference_image_features(t, batch["pixel_values"], layer_norm=True).reshape(-1, LM["hidden"])
    embeddings = t["language_model.model.tok_embeddings.weight"][ids]
    image = (ids == image_token_id).nonzero().squeeze(1)
    embeddings = embeddings.index_put((image,), features)
    return reference_internlm2_from_embeddings(t, embeddings)


def official_scores(t: dict, batches: list[dict], image_token_id: int) -> dict[str, float]:
    """compute_zc_score.py's rule on the original: gradients of each batch's mean answer cross-entropy summed over
    the batches, then per target module (wqkv, wo, attn.qkv, attn.proj) the sum of its parameters' gradient norms."""
    leaves = {name: tensor.clone().requires_grad_(True) for name, tensor in t.items()}
    for batch in batches:
        logits = reference_logits(leaves, batch, image_token_id)
        F.cross_entropy(logits[:-1], batch["labels"][0, 1:], ignore_index=-100).backward()
    return {
        module: sum(float(p.grad.norm()) for name, p in leaves.items() if name.rsplit(".", 1)[0] == module)
        for module in REMOTE_MODULES
    }


def _workspace(root, model, data) -> Project:
    create_workspace(
        root,
        model=model,
        data=data,
        tasks=list(PIPELINE_TASKS),
        profile="reference",
        stages={"zc-score": {"batch_size": 1}},
    )  # one sample a batch: the gradient sum is order-free
    return Project.open(root)


def test_reference_profile_scores_and_allocates_the_fused_projection_as_the_original(
    internvl2, pipeline_data, tmp_path
):
    from dmole.stages.allocate import allocate
    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.training.chat import chat_examples
    from dmole.stages.zc_score import zc_score

    src, out = internvl2
    project = _workspace(tmp_path / "ws", out, pipeline_data)
    task = PIPELINE_TASKS[0]
    zc_score(project, task)
    rows = read_parquet(project.store.latest("zc-score", task).file("scores.parquet")).to_pylist()
    # one qkv candidate per layer of both towers, beside its output projection: 2 per layer, as the original's
    assert sorted(r["module"] for r in rows) == sorted(REMOTE_MODULES.values())
    assert {(r["tower"], r["layer"]) for r in rows if r["kind"] == "qkv"} == (
        {("language", i) for i in range(LM["layers"])} | {("vision", i) for i in range(VIT["layers"])}
    )

    fused = source_tensors(src)
    adapter = load_family(out, device="cpu", max_tiles=project.config.max_tiles)
    samples = load_train_samples(project.data_root, project.config.task(task))
    assert len(samples) <= 4  # all of them score (M_s >= 4 b), one per batch, so the order does not matter
    batches = [adapter.train_inputs(chat_examples([sample])) for sample in samples]
    official = official_scores(fused, batches, adapter.model.config.image_token_id)
    ours = {r["module"]: r for r in rows}
    for remote, module in REMOTE_MODULES.items():
        assert ours[module]["score"] == pytest.approx(official[remote], rel=1e-4), module
        weight = fused[remote + ".weight"]
        assert (ours[module]["d_in"], ours[module]["d_out"]) == (weight.shape[1], weight.shape[0]), module

    allocate(project, task)
    arch = read_json(project.store.latest("allocate", task).file("arch.json"))
    expected = allocate_modules(
        [
            ScoredModule(
                REMOTE_MODULES[m],
                "vision" if m.startswith("vision") else "language",
                score,
                fused[m + ".weight"].shape[1],
                fused[m + ".weight"].shape[0],
            )
            for m, score in official.items()
        ],
        fraction=0.5,
        rank=arch["rank"],
    )
    assert arch["selected"] == expected.selected
    assert arch["expert_parameters"] == expected.expert_parameters
    assert arch["budget"] == round(0.5 * len(REMOTE_MODULES))


def _fused_lora(t: dict, experts: ExpertModel, scale: float) -> dict:
    """The remote tensors with the expert written as a LoRA on each fused projection: W + scale * B A, with B's
    rows placed where the member's rows sit in the fused tensor."""
    params = dict(experts.model.named_parameters())
    lora = lambda module, part: params[f"base_model.model.{module}.lora_{part}.task_1.weight"]  # noqa: E731
    out = dict(t)
    q_rows, k_rows, v_rows = reference_qkv_rows(LM["heads"], LM["kv"], HEAD_DIM)
    for i in range(LM["layers"]):
        attn = f"model.language_model.layers.{i}.self_attn."
        b = torch.zeros((LM["heads"] + 2 * LM["kv"]) * HEAD_DIM, experts.peft.peft_config["task_1"].r)
        for rows, member in ((q_rows, "q_proj"), (k_rows, "k_proj"), (v_rows, "v_proj")):
            b[rows] = lora(attn + member, "B")
        key = f"language_model.model.layers.{i}.attention.wqkv.weight"
        out[key] = t[key] + scale * b @ lora(attn + "q_proj", "A")
    for i in range(VIT["layers"]):
        attn = f"model.vision_tower.encoder.layer.{i}.attention."
        b = torch.cat([lora(attn + member, "B") for member in ("q_proj", "k_proj", "v_proj")])
        key = f"vision_model.encoder.layers.{i}.attn.qkv.weight"
        out[key] = t[key] + scale * b @ lora(attn + "q_proj", "A")
    return out


def _example(colour=(200, 40, 90)) -> ChatExample:
    return ChatExample(Image.new("RGB", (VIT["image"], VIT["image"]), colour), [("<image>\nWhat colour?", "Red.")])


def test_shared_a_expert_is_a_lora_on_the_fused_projection(internvl2):
    src, out = internvl2
    adapter = load_family(out, device="cpu", max_tiles=1)
    qkv = [c for c in adapter.candidates(fuse=True) if c.kind == "qkv"]
    experts = ExpertModel(adapter.model, towers(adapter), groups=groups(adapter))
    settings = LoraSettings(rank=4, alpha=8, dropout=0.5)
    trainable = experts.add_expert(1, [c.name for c in qkv], settings)
    fused = source_tensors(src)
    # the fused LoRA's parameter count: r x (d_in + rows of the fused tensor), per fused projection
    remote = [m for m, c in REMOTE_MODULES.items() if c.endswith(".qkv")]
    assert sum(p.numel() for p in trainable) == sum(settings.rank * sum(fused[m + ".weight"].shape) for m in remote)
    for c in qkv:
        layers = [experts.model.get_submodule(f"base_model.model.{m}") for m in c.members]
        assert all(layer.lora_A["task_1"] is layers[0].lora_A["task_1"] for layer in layers)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in experts.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)

    batch = adapter.train_inputs([_example()])
    experts.model.eval()
    with torch.no_grad(), experts.routed([(1,)]):
        ours = experts.model(**batch).logits[0]
    with torch.no_grad():
        reference = reference_logits(
            _fused_lora(fused, experts, settings.alpha / settings.rank), batch, adapter.model.config.image_token_id
        )
        base = reference_logits(fused, batch, adapter.model.config.image_token_id)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-2)  # the expert acts

    # in training, one dropout mask per layer for the three members, as the fused LoRA drops out its one input
    drawn: dict[int, list] = {}
    for module in experts.model.modules():
        if isinstance(module, SharedDropout):
            module.register_forward_hook(lambda m, i, o: drawn.setdefault(id(m), []).append((i[0], o)))
    experts.model.train()
    with experts.routed([(1,)]):
        experts.model(**batch)
    assert len(drawn) == len(qkv) and all(len(calls) == 3 for calls in drawn.values())
    for calls in drawn.values():
        (x, first), rest = calls[0], calls[1:]
        assert all(torch.equal(x, i) and torch.equal(first, o) for i, o in rest)
        assert not torch.equal(first, x)


def test_reference_profile_trains_saves_and_reloads_the_shared_a_expert(internvl2, run_cli_pipeline, tmp_path):
    from peft import PeftModel

    _, out = internvl2
    workspace = run_cli_pipeline(out, tmp_path / "ws", profile="reference")
    project = Project.open(workspace)
    adapter = load_family(out, device="cpu", max_tiles=project.config.max_tiles)
    group_members = groups(adapter)
    for task in PIPELINE_TASKS:
        arch = read_json(project.store.latest("allocate", task).file("arch.json"))
        version = project.store.latest("train-task", task)
        sidecar = read_json(expert_folder(version) / SIDECAR)
        chosen = {m: list(group_members[m]) for m in arch["selected"] if m in group_members}
        assert sidecar.get("shared_a", {}) == chosen
        assert sidecar["target_modules"] == sorted(
            member for m in arch["selected"] for member in group_members.get(m, [m])
        )
        assert read_json(expert_folder(version) / "adapter_config.json")["target_modules"] == sidecar["target_modules"]
    last = project.store.latest("train-task", PIPELINE_TASKS[-1])
    folder = expert_folder(last)
    shared = read_json(folder / SIDECAR).get("shared_a")
    assert shared, "the allocation chose no qkv group: the test would not reach the shared-A expert"

    # dmole's loader: the saved tensors, bit for bit, with each group's A one module again
    experts = expert_model(
        project, load_family(out, device="cpu", max_tiles=project.config.max_tiles), loaded={len(PIPELINE_TASKS): last}
    )
    name = f"task_{len(PIPELINE_TASKS)}"
    saved = load_file(folder / "adapter_model.safetensors")
    loaded = {k: v for k, v in experts.model.state_dict().items() if f".{name}." in k}
    assert {k.replace(f".{name}.", ".") for k in loaded} == set(saved)
    assert all(torch.equal(v, saved[k.replace(f".{name}.", ".")]) for k, v in loaded.items())
    for members in shared.values():
        layers = [experts.model.get_submodule(f"base_model.model.{m}") for m in members]
        assert all(layer.lora_A[name] is layers[0].lora_A[name] for layer in layers)

    # PEFT alone loads the folder as three LoRAs with equal A copies: the same outputs, A untied
    plain = PeftModel.from_pretrained(load_family(out, device="cpu").model, folder).eval()
    batch = adapter.train_inputs([_example()])
    experts.model.eval()
    with torch.no_grad(), experts.routed([(len(PIPELINE_TASKS),)]):
        ours = experts.model(**batch).logits
    with torch.no_grad():
        theirs = plain(**batch).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    members = next(iter(shared.values()))
    copies = [plain.get_submodule(f"base_model.model.{m}").lora_A["default"] for m in members]
    assert copies[0] is not copies[1] and torch.equal(copies[0].weight, copies[1].weight)


def test_a_saved_expert_with_different_a_copies_is_refused(internvl2, tmp_path):
    from dmole.stages.methods.lora_trainer import save_expert

    _, out = internvl2
    adapter = load_family(out, device="cpu", max_tiles=1)
    where, grouped = towers(adapter), groups(adapter)
    group = next(c for c in adapter.candidates(fuse=True) if c.kind == "qkv")
    experts = ExpertModel(adapter.model, where, groups=grouped)
    experts.add_expert(1, [group.name], LoraSettings(8, 16, 0.05))
    targets, shared = experts.targets([group.name])
    save_expert(
        experts.model,
        "task_1",
        tmp_path / "expert",
        {"target_modules": targets, "shared_a": {k: list(v) for k, v in shared.items()}},
    )
    weights = load_file(tmp_path / "expert" / "adapter_model.safetensors")
    key = next(k for k in weights if group.members[1] in k and "lora_A" in k)
    weights[key] = weights[key] + 1
    save_file(weights, tmp_path / "expert" / "adapter_model.safetensors")
    fresh = ExpertModel(load_family(out, device="cpu").model, where, groups=grouped)
    with pytest.raises(ValueError, match="not a shared-A expert"):
        fresh.load_expert(1, tmp_path / "expert", json.loads((tmp_path / "expert" / SIDECAR).read_text())["shared_a"])
