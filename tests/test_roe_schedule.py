"""The spec's formulas (roe.md §5.1-§5.4): b(ρ) against the reference table and by Monte Carlo, the stage
boundaries and annealing (T5), the lr gate per named group (T6), the hinge and its weight (T7)."""

from __future__ import annotations

import math

import pytest
import torch

from dmole.stages.roe.loss import difficulty_weight, per_example_ce, roe_objective
from dmole.stages.roe.schedule import RoEStageCallback, ScheduleState, StageSchedule, random_skip_bias
from dmole.stages.training.loop import LoopSettings, ParamGroup, train, warmup_cosine


@pytest.mark.parametrize("rho, b", [(0.0, 1.0), (0.1, 0.55279), (0.2, 0.36754), (0.3, 0.22540), (0.4, 0.10557)])
def test_random_skip_bias_matches_the_reference_table(rho, b):
    assert random_skip_bias(rho) == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.7])
def test_stage0_draws_skip_at_rate_rho(rho):
    u = torch.rand(400_000, 2, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(1000.0 * (u + torch.tensor([random_skip_bias(rho), 0.0])), dim=-1)
    assert float((p[:, 1] > 0.5).float().mean()) == pytest.approx(rho, abs=0.01)


def test_boundaries_interval_and_annealing():
    s = StageSchedule(total=1000, rho=0.3)
    assert (s.s1, s.s2, s.interval) == (300, 500, 5)
    assert [s.stage(x) for x in (0, 299, 300, 499, 500, 999)] == [0, 0, 1, 1, 2, 2]
    assert s.anneal_count(299) == 0 and s.anneal_count(300) == 1 and s.anneal_count(304) == 1
    assert s.anneal_count(305) == 2
    assert s.tau(300) == pytest.approx(10 * 0.95)
    assert s.tau(499) == pytest.approx(10 * 0.95**40) == pytest.approx(1.285, abs=1e-3)  # ≈ 1.29 (spec)
    assert s.tau(999) == pytest.approx(10 * 0.95**140) == pytest.approx(0.0076, abs=1e-4)  # ≈ 0.008
    assert s.beta(0) == pytest.approx(0.22540, abs=1e-5)
    assert s.beta(300) == pytest.approx(random_skip_bias(0.3) * 0.85)
    assert s.beta(499) == pytest.approx(random_skip_bias(0.3) * 0.85**40)
    assert s.beta(500) == 0.0
    assert StageSchedule(total=10, rho=0.3).interval == 1  # K = max(1, ⌊0.005·S⌋)


def _toy_groups():
    torch.manual_seed(0)
    router, adapter, backbone = (torch.nn.Linear(3, 2, bias=False) for _ in range(3))
    groups = [
        ParamGroup("roe_router", list(router.parameters()), 4e-4),
        ParamGroup("roe_adapter", list(adapter.parameters()), 4e-4),
        ParamGroup("backbone_llm", list(backbone.parameters()), 2e-6),
    ]
    trained_in = {"roe_router": {1, 2}, "roe_adapter": {0, 1, 2}, "backbone_llm": {2}}
    return (router, adapter, backbone), groups, trained_in


def test_every_group_lr_is_base_times_schedule_times_gate():
    modules, groups, trained_in = _toy_groups()
    settings = LoopSettings(epochs=1, batch_size=1, lr=4e-4, weight_decay=0.0, warmup_ratio=0.05)
    n = 40
    schedule = StageSchedule(total=n, rho=0.3)
    state = ScheduleState()
    callback = RoEStageCallback(schedule, state, groups, trained_in, settings.warmup_ratio)
    router, adapter, backbone = modules
    router_grads = []

    def loss_fn(_model, _indices, _scope):
        router_grads.append(state.stage)
        x = torch.ones(1, 3)
        routed = router(x).sum() if state.stage > 0 else 0.0  # stage 0 never consults the router
        return {"loss": adapter(x).sum() + backbone(x).sum() + routed}

    before = {name: [p.detach().clone() for p in g.params] for name, g in zip(trained_in, groups)}
    result = train(torch.nn.ModuleList(modules), groups, loss_fn, n, settings, callbacks=[callback])
    for row in result.log:
        s = row["step"] - 1
        factor = warmup_cosine(s, n, settings.warmup_ratio)
        assert row["stage"] == schedule.stage(s)
        for g in groups:
            gate = 1.0 if schedule.stage(s) in trained_in[g.name] else 0.0
            assert row[f"lr/{g.name}"] == pytest.approx(g.lr * factor * gate, rel=1e-12, abs=1e-18)
    assert {row["tau"] for row in result.log if row["stage"] == 0} == {10.0}
    assert not torch.equal(before["roe_adapter"][0], adapter.weight)


def _toy_run(n: int, *, checkpoint_dir=None, stop_after: int | None = None, warmup: float = 0.05):
    """A toy three-group run under the stage callback; records each step's stage and requires_grad flags."""
    modules, groups, trained_in = _toy_groups()
    state = ScheduleState()
    callback = RoEStageCallback(StageSchedule(total=n, rho=0.3), state, groups, trained_in, warmup)
    seen, weights = [], []

    def loss_fn(_model, _indices, _scope):
        if stop_after is not None and len(seen) == stop_after:
            raise KeyboardInterrupt
        seen.append((state.stage, *(m.weight.requires_grad for m in modules)))
        weights.append([m.weight.detach().clone() for m in modules])
        return {"loss": sum(m(torch.ones(1, 3)).sum() for m in modules)}

    settings = LoopSettings(epochs=1, batch_size=1, lr=4e-4, weight_decay=0.0, warmup_ratio=warmup, checkpoint_every=5)
    result = train(
        torch.nn.ModuleList(modules), groups, loss_fn, n, settings, callbacks=[callback], checkpoint_dir=checkpoint_dir
    )
    return result, seen, weights


def test_gated_groups_get_no_gradient_and_do_not_move():
    _, seen, weights = _toy_run(20)
    assert seen[0] == (0, False, True, False) and seen[8] == (1, True, True, False)
    assert seen[12] == (2, True, True, True)
    assert torch.equal(weights[0][0], weights[6][0])  # router: stage 0 (steps 0-5)
    assert torch.equal(weights[0][2], weights[10][2])  # backbone: stages 0-1 (steps 0-9)
    assert not torch.equal(weights[0][1], weights[6][1])  # adapter trains from the start


def test_resumed_run_sees_the_same_schedule_and_lrs(tmp_path):
    straight, _, _ = _toy_run(20)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(20, checkpoint_dir=tmp_path, stop_after=12)
    resumed, _, _ = _toy_run(20, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 10
    keys = ("stage", "tau", "beta", "lr/roe_router", "lr/roe_adapter", "lr/backbone_llm")
    assert [[row[k] for k in keys] for row in resumed.log] == [[row[k] for k in keys] for row in straight.log]


def test_changed_groups_are_caught():
    _, groups, trained_in = _toy_groups()
    callback = RoEStageCallback(
        StageSchedule(total=4, rho=0.3),
        ScheduleState(),
        groups[:2],
        {k: trained_in[k] for k in ("roe_router", "roe_adapter")},
        0.0,
    )
    optimizer = torch.optim.AdamW([{"params": g.params, "lr": g.lr, "name": g.name} for g in groups])
    with pytest.raises(RuntimeError, match="parameter groups changed"):
        callback.on_step_begin(0, 4, optimizer)


def test_hinge_and_difficulty_weight():
    ce = torch.tensor([0.0, 1.0, 3.0], requires_grad=True)
    skip = torch.tensor([0.1, 0.5, 0.0], requires_grad=True)
    assert difficulty_weight(torch.tensor([1.0]), 5.0).item() == pytest.approx(math.exp(-5), rel=1e-6)  # ≈ 0.0067
    out = roe_objective(ce, skip, rho=0.3, lam=2.0, gamma=5.0)
    expected_reg = [2.0 * 1.0 * 0.2, 0.0, 2.0 * math.exp(-15) * 0.3]  # over-skipping is not punished
    assert out["reg"].item() == pytest.approx(sum(expected_reg) / 3)
    assert out["loss"].item() == pytest.approx((0 + 1 + 3 + sum(expected_reg)) / 3)
    out["loss"].backward()
    assert torch.allclose(ce.grad, torch.full((3,), 1 / 3))  # the weight carries no gradient
    assert skip.grad.tolist() == pytest.approx([-2.0 / 3, 0.0, -2.0 * math.exp(-15) * 0.3 / 0.3 / 3])


def test_batch_scope_hinges_the_batch_mean_skip():
    ce = torch.tensor([0.0, 1.0, 3.0], requires_grad=True)
    skip = torch.tensor([0.6, 0.0, 0.0], requires_grad=True)  # mean 0.2: under ρ 0.3 though one example skips 0.6
    out = roe_objective(ce, skip, rho=0.3, lam=2.0, gamma=5.0, scope="batch")
    mean_weight = (1.0 + math.exp(-5) + math.exp(-15)) / 3
    assert out["reg"].item() == pytest.approx(2.0 * mean_weight * 0.1)
    out["loss"].backward()
    # every example's skip gets the same push, whatever its own skip: CE alone decides who skips more
    assert skip.grad.tolist() == pytest.approx([-2.0 * mean_weight / 3] * 3)
    over = roe_objective(ce, torch.tensor([0.9, 0.3, 0.0]), rho=0.3, lam=2.0, gamma=5.0, scope="batch")
    assert over["reg"].item() == 0.0  # the per-example hinge would punish the two examples at 0
    assert roe_objective(ce, torch.tensor([0.9, 0.3, 0.0]), rho=0.3, lam=2.0, gamma=5.0)["reg"].item() > 0


def test_per_example_ce_averages_examples_not_tokens_and_splits_exactly():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11, requires_grad=True)
    labels = torch.tensor(
        [
            [-100, -100, 3, 4, 5, 6],
            [1, -100, -100, -100, -100, -100],
            [-100, -100, -100, 2, 2, -100],
            [-100, 7, 8, 9, 10, 1],
        ]
    )
    ce = per_example_ce(logits, labels)
    assert ce[1] == 0.0  # no supervised next token
    token = torch.nn.functional.cross_entropy(logits[0, 1:5], labels[0, 2:6])
    assert ce[0].item() == pytest.approx(token.item(), rel=1e-6)
    skip = torch.rand(4)
    full = roe_objective(ce, skip, rho=0.3, lam=1.0, gamma=5.0)["loss"]
    (full_grad,) = torch.autograd.grad(full, logits)
    halves = sum(
        0.5 * roe_objective(per_example_ce(logits[i], labels[i]), skip[i], rho=0.3, lam=1.0, gamma=5.0)["loss"]
        for i in (slice(0, 2), slice(2, 4))
    )
    (half_grad,) = torch.autograd.grad(halves, logits)
    assert torch.allclose(full_grad, half_grad, atol=1e-7)
