"""Each continual method's defining mechanism, and all of Table 2's methods through one pipeline."""

from __future__ import annotations

import pytest
import torch

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_json
from dmole.stages.demo import run_pipeline
from dmole.stages.init import create_workspace
from dmole.stages.method_groups import TABLE2
from dmole.stages.methods import REGISTRY, get_method
from dmole.stages.methods.ewc import FISHER, ewc_penalty
from dmole.stages.methods.lwf import distillation_loss
from dmole.stages.methods.olora import orthogonality_loss
from dmole.stages.project import Project
from dmole.stages.train_task import train_run, train_task

TASKS = ["color-vqa", "shape-choice"]


@pytest.fixture
def two_tasks(micro_bench, tmp_path):
    """A workspace over the micro benchmark's first two tasks."""
    root = tmp_path / "ws"
    create_workspace(
        root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=TASKS, stages=MICRO_STAGES
    )
    return Project.open(root)


def second_task_trainer(project: Project, method: str):
    """Train ``method`` on the first task, then build (without training) its trainer for the second."""
    train_task(project, TASKS[0], {"method": method})
    chosen, run, _ = train_run(project, TASKS[1], {"method": method})
    chosen.carried(run)
    return run, chosen.trainer(run, project.load_model())


# ---- LwF ------------------------------------------------------------------------------------------------------
def test_lwf_targets_are_the_previous_models_outputs(two_tasks):
    from peft import PeftModel

    from dmole.stages.methods.lora import expert_folder
    from dmole.stages.models.registry import load_family

    _run, trainer = second_task_trainer(two_tasks, "lwf-lora")
    indices = [0, 1, 2]
    batch = trainer.adapter.on_device(trainer.inputs(indices))
    trainer.model.train()  # as the training loop runs it
    targets = trainer.before(trainer.model, batch, indices)
    previous = PeftModel.from_pretrained(
        load_family(two_tasks.model_path).model, expert_folder(get_method("lwf-lora").trained(two_tasks, TASKS[0]))
    ).eval()
    with torch.no_grad():
        expected = previous(**batch).logits
    assert torch.allclose(targets, expected, atol=1e-5)
    assert trainer.model.training  # the teacher pass leaves the student in training mode
    # the new adapter starts as the previous one, so at step 0 the student (without dropout) is its teacher
    trainer.model.eval()
    with torch.no_grad(), trainer.route(indices, batch):
        outputs = trainer.model(**batch)
    assert trainer.extra_losses(trainer.model, batch, outputs, targets)["lwf"].item() == pytest.approx(0, abs=1e-6)


def test_distillation_loss_is_traces_kl_summed_over_positions_per_sample():
    torch.manual_seed(0)
    new, old, temperature = torch.randn(2, 5, 11), torch.randn(2, 5, 11), 2.0
    # TRACE model/Regular/LwF.py: kl_div(log_softmax(old / T), softmax(new / T), 'batchmean'), written out
    p_new = torch.softmax(new / temperature, -1)
    expected = (p_new * (p_new.log() - torch.log_softmax(old / temperature, -1))).sum() / new.shape[0]
    assert distillation_loss(new, old, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(old, old, temperature).item() == pytest.approx(0, abs=1e-6)
    doubled = distillation_loss(new.repeat(1, 2, 1), old.repeat(1, 2, 1), temperature)  # every position counts
    assert doubled.item() == pytest.approx(2 * expected.item(), rel=1e-5)


# ---- EWC ------------------------------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_old_weights_and_grows_as_they_move():
    anchors = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    fisher = {"a": torch.rand(3, 4), "b": torch.rand(5)}
    assert ewc_penalty({k: v.clone() for k, v in anchors.items()}, anchors, fisher, 400.0).item() == 0
    direction = {k: torch.randn_like(v) for k, v in anchors.items()}
    penalties = [
        ewc_penalty({k: anchors[k] + step * direction[k] for k in anchors}, anchors, fisher, 400.0).item()
        for step in (0.01, 0.1, 1.0)
    ]
    assert 0 < penalties[0] < penalties[1] < penalties[2]


def test_ewc_estimates_the_fisher_after_each_task_and_anchors_the_next(two_tasks):
    from safetensors.torch import load_file

    run, trainer = second_task_trainer(two_tasks, "ewc-lora")
    first = load_file(get_method("ewc-lora").trained(two_tasks, TASKS[0]).file(FISHER))
    assert set(first) == set(trainer.adapter_params(run.task_id))
    assert all((f >= 0).all() for f in first.values()) and any(f.sum() > 0 for f in first.values())
    assert trainer.extra_losses(trainer.model, {}, None, None)["ewc"].item() == 0  # starts at the old weights
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    assert trainer.extra_losses(trainer.model, {}, None, None)["ewc"].item() > 0
    train_task(two_tasks, TASKS[1], {"method": "ewc-lora"})
    second = load_file(get_method("ewc-lora").trained(two_tasks, TASKS[1]).file(FISHER))
    assert all((second[k] >= first[k]).all() for k in first)  # a running sum over the tasks


def fisher_run(checkpoint_dir, seed: int = 0):
    """A linear model trained at lr 0 (fixed weights) for 4 steps, 2 per epoch, with the Fisher accumulator."""
    from dmole.stages.methods.ewc import FisherAccumulator
    from dmole.stages.training.loop import LoopSettings, ParamGroup, train

    torch.manual_seed(seed)
    model, xs, ys = torch.nn.Linear(3, 2), torch.randn(6, 3), torch.randn(6, 2)
    settings = LoopSettings(epochs=2, batch_size=3, lr=0.0, clip=1e-3, precision="fp32", checkpoint_every=1)
    params = dict(model.named_parameters())
    accumulator = FisherAccumulator(params, {k: torch.ones_like(p) for k, p in params.items()}, steps_per_epoch=2)

    def loss_fn(prepared, indices, _scope):  # the loop passes its ExitStack third
        return {"loss": (prepared(xs[indices]) - ys[indices]).pow(2).sum(-1).mean()}

    train(
        model,
        [ParamGroup("m", list(params.values()))],
        loss_fn,
        6,
        settings,
        checkpoint_dir=checkpoint_dir,
        gradient_hook=accumulator,
    )
    return model, xs, ys, settings, accumulator.state


def test_fisher_accumulates_each_steps_squared_gradient_over_the_steps_per_epoch(tmp_path):
    from dmole.stages.training.loop import batch_plan

    model, xs, ys, settings, fisher = fisher_run(tmp_path / "a")
    expected = {k: torch.ones_like(p) for k, p in model.named_parameters()}  # the earlier tasks' sum
    for batch in batch_plan(6, settings):  # TRACE EWC.py: fisher += grad^2 / len(dataloader), every step
        model.zero_grad()
        (model(xs[batch]) - ys[batch]).pow(2).sum(-1).mean().backward()
        for k, p in model.named_parameters():
            expected[k] += p.grad**2 / 2  # unclipped: TRACE's hook sees the gradient before clipping
    for k, value in expected.items():
        assert torch.allclose(fisher[k], value, rtol=1e-5), k


def test_a_resumed_run_keeps_the_fisher_accumulated_before_it(tmp_path):
    *_, whole = fisher_run(tmp_path / "a")
    *_, resumed = fisher_run(tmp_path / "a")  # its checkpoint after step 3: a resume runs step 4 only
    for k in whole:
        assert torch.allclose(resumed[k], whole[k]), k


# ---- O-LoRA ---------------------------------------------------------------------------------------------------
def test_orthogonality_loss_is_zero_for_orthogonal_as_and_positive_otherwise():
    basis = torch.linalg.qr(torch.randn(8, 8))[0].T  # eight orthonormal rows
    old = [{"m": basis[:2]}, {"m": basis[2:4]}]
    assert orthogonality_loss({"m": basis[4:6]}, old).item() == pytest.approx(0, abs=1e-5)
    assert orthogonality_loss({"m": basis[4:6] + 0.1 * basis[0]}, old).item() > 0.1


def test_olora_targets_q_and_v_as_olora_does(two_tasks):
    from dmole.stages.methods.lora import target_projections

    adapter = two_tasks.load_model()
    kinds = {c.name: c.kind for c in adapter.candidates(include_mlp=True)}
    qv = target_projections(adapter, "qv")
    assert qv == [name for name, kind in kinds.items() if kind in ("q", "v")]
    assert target_projections(adapter, "all") == list(kinds)
    _, run, _ = train_run(two_tasks, TASKS[0], {"method": "o-lora", "hparams": {"targets": "qv"}})
    trainer = get_method("o-lora").trainer(run, adapter)
    assert trainer.modules == sorted(qv)


def test_olora_keeps_earlier_loras_frozen_and_pushes_the_new_one_away(two_tasks):
    _run, trainer = second_task_trainer(two_tasks, "o-lora")
    new = {id(p) for p in trainer.params}
    old = trainer.adapter_params(1)
    assert old and not any(id(p) in new or p.requires_grad for p in old.values())
    losses = trainer.extra_losses(trainer.model, {}, None, None)
    assert losses["orthogonal"].item() > 0 and losses["l2"].item() == 0  # lambda_2 = 0 by default
    assert trainer.routes[0] == (1, 2)  # every LoRA so far serves every sample


# ---- MoELoRA --------------------------------------------------------------------------------------------------
def test_moelora_router_weights_sum_to_one_and_every_expert_learns():
    from dmole.stages.methods.moe_layers import MoELoraLinear

    torch.manual_seed(0)
    layer = MoELoraLinear(torch.nn.Linear(6, 5), experts=4, rank=8, alpha=16, dropout=0.0)
    x = torch.randn(3, 7, 6)
    gates = layer.gates(x)
    assert gates.shape == (3, 7, 4) and torch.allclose(gates.sum(-1), torch.ones(3, 7))
    assert torch.allclose(layer(x), layer.base(x))  # B starts at zero: the wrapped layer unchanged
    optimizer = torch.optim.SGD([layer.router.weight, layer.lora_A, layer.lora_B], lr=0.5)
    for _ in range(2):  # after one step B is non-zero, so every part gets a gradient
        optimizer.zero_grad()
        layer(x).pow(2).mean().backward()
        optimizer.step()
    for e in range(4):
        assert layer.lora_A.grad[e].abs().sum() > 0 and layer.lora_B.grad[e].abs().sum() > 0, e
    assert layer.router.weight.grad.abs().sum() > 0


def test_moelora_experts_draw_their_own_dropout_masks():
    from dmole.stages.methods.moe_layers import MoELoraLinear

    torch.manual_seed(0)
    layer = MoELoraLinear(torch.nn.Linear(6, 5), experts=4, rank=8, alpha=16, dropout=0.5).train()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 7, 6)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)  # the same draws, by hand: a fresh mask for each expert, as CoIN's loop calls its dropout
    gates = torch.softmax(x @ layer.router.weight.T, -1)
    per_expert = [torch.nn.functional.dropout(x, 0.5) @ layer.lora_A[e].T @ layer.lora_B[e].T for e in range(4)]
    expected = layer.base(x) + 16 / 8 * sum(gates[..., e : e + 1] * per_expert[e] for e in range(4))
    assert torch.allclose(out, expected, atol=1e-6)
    torch.manual_seed(1)
    shared = torch.nn.functional.dropout(x, 0.5)
    one_mask = layer.base(x) + 2 * sum(
        gates[..., e : e + 1] * (shared @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(4)
    )
    assert not torch.allclose(out, one_mask, atol=1e-3)


def test_moelora_rank_must_split_among_the_experts(two_tasks):
    from dmole.stages.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of experts"):
        train_run(two_tasks, TASKS[0], {"method": "moelora", "hparams": {"experts": 3}})


# ---- joint ----------------------------------------------------------------------------------------------------
def test_joint_repeats_each_task_by_its_epochs_at_the_registrys_batch(micro_bench, tmp_path):
    import json

    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.training.steps import loop_settings

    registry = json.loads((micro_bench / "data" / "tasks.json").read_text())
    schedule = {"color-vqa": (3, 2), "shape-choice": (1.5, 5)}  # epochs, batch size
    for task in registry["tasks"]:
        if task["name"] in schedule:
            task["epochs"], task["batch_size"] = schedule[task["name"]]
    (tmp_path / "tasks.json").write_text(json.dumps(registry))
    create_workspace(
        tmp_path / "ws",
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=TASKS,
        registry=tmp_path / "tasks.json",
        stages={"train-task": {"lr": 3e-3}},
    )
    project = Project.open(tmp_path / "ws")
    _, run, _ = train_run(project, "all", {"method": "joint"})
    loaded = {name: load_train_samples(project.data_root, project.config.task(name)) for name in TASKS}
    sizes = {name: int(schedule[name][0] * len(loaded[name])) for name in TASKS}
    assert len(run.samples) == sum(sizes.values())
    for name in TASKS:
        assert sum(s in loaded[name] for s in run.samples) == sizes[name]
    settings = loop_settings(run.options, run.spec, run.union)
    assert settings.epochs == 1 and settings.batch_size == schedule[max(sizes, key=sizes.get)][1]


# ---- parity with D-MoLE's trainable parameters -----------------------------------------------------------------
def test_parity_shape_is_the_largest_adapter_not_above_the_budget():
    from itertools import accumulate

    from dmole.stages.methods.lora import parity_shape

    units, overheads = [10, 20, 30], [0, 4, 4]

    def cost(rank, n):
        return sum(rank * u + o for u, o in zip(units[:n], overheads[:n]))

    for budget, step in [(300, 1), (359, 1), (250, 2), (61, 2), (30, 2)]:
        rank, n = parity_shape(units, overheads, budget, step)
        assert cost(rank, n) <= budget and rank % step == 0
        if n == len(units):  # no larger multiple of step fits on every module
            assert cost(rank + step, n) > budget
        else:  # not even one step fits everywhere: as many leading modules as fit at one step
            assert rank == step and cost(step, len(units)) > budget
            assert list(accumulate(step * u + o for u, o in zip(units, overheads)))[n] > budget


@pytest.mark.parametrize("method", ["seq-lora", "moelora"])
def test_parity_trains_about_dmoles_parameters_per_task(two_tasks, method):
    from dmole.stages.allocate import allocate
    from dmole.stages.zc_score import zc_score

    zc_score(two_tasks, TASKS[0])
    budget = read_json(allocate(two_tasks, TASKS[0]).version.file("arch.json"))["expert_parameters"]
    result = train_task(two_tasks, TASKS[0], {"method": method, "hparams": {"parity": True}})
    summary = result.version.manifest["summary"]
    modules = two_tasks.load_model().candidates(include_mlp=True)
    rank_step = (4 if method == "moelora" else 1) * sum(c.d_in + c.d_out for c in modules)
    assert summary["dmole_parameters"] == budget
    assert budget - rank_step < summary["trainable_parameters"] <= budget
    assert any(i["stage"] == "allocate" for i in result.version.manifest["inputs"])


# ---- every method of Table 2 in one pipeline ------------------------------------------------------------------
@pytest.mark.slow
def test_table2_methods_run_through_one_pipeline_and_report(two_tasks):
    report = run_pipeline(two_tasks, TABLE2)
    result = read_json(report.version.file("cl_metrics.json"))
    assert list(result["methods"]) == [m for m in REGISTRY if m in TABLE2]  # Table 2's order
    methods = result["methods"]
    assert methods["zero-shot"]["bwt"] == 0 and methods["zero-shot"]["matrix"][1] == methods["zero-shot"]["matrix"][0]
    assert methods["joint"]["matrix"][1] == [None, None] and None not in methods["joint"]["matrix"][2]
    for name in TABLE2:
        assert None not in methods[name]["matrix"][-1], name
    store = two_tasks.store
    for name in ("lwf-lora", "ewc-lora", "moelora", "o-lora"):  # each builds on its own first task
        inputs = store.latest(f"{name}.train-task", TASKS[1]).manifest["inputs"]
        assert any(i["stage"] == f"{name}.train-task" and i["task"] == TASKS[0] for i in inputs), name
    counts = {
        name: store.latest(f"{name}.train-task", TASKS[0]).manifest["summary"]["trainable_parameters"]
        for name in ("seq-lora", "lwf-lora", "ewc-lora", "o-lora", "moelora")
    }
    assert len({counts[n] for n in ("seq-lora", "lwf-lora", "ewc-lora", "o-lora")}) == 1
    assert counts["moelora"] > counts["seq-lora"]  # the same rank, plus a router per projection
    sidecar = read_json(store.latest("lwf-lora.train-task", TASKS[1]).file("expert/dmole_expert.json"))
    assert sidecar["method"] == "lwf-lora" and sidecar["rank"] == 4
