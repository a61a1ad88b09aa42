"""Soft routing in training (roe.md §4.2): stage 0 skips at random without consulting the router, later
stages mix both paths by the router's probabilities, padding and always-executed layers run the block."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny
from dmole.stages.roe.attach import attach, roe_shape
from dmole.stages.roe.loss import per_example_ce, roe_objective
from dmole.stages.roe.modules import RoEModules
from dmole.stages.roe.plan import TrainingRouting, routing
from dmole.stages.roe.schedule import ScheduleState, random_skip_bias
from dmole.stages.roe.segments import ImageTokens, training_segments
from tiny_sizes import small_lm

SIZE = small_lm()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    adapter = load_family(build_tiny("llava", tmp_path_factory.mktemp("llava"), size=SIZE))
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0])))
    examples = [
        ChatExample(
            Image.new("RGB", (16, 16), "red"), [("<image>\nwhat colour?", "red"), ("and the shape?", "a square")]
        ),
        ChatExample(Image.new("RGB", (16, 16), "blue"), [("<image>\nname the colour", "blue")]),
    ]
    batch = adapter.train_batch(examples)
    labels = batch.pop("labels")
    segments = training_segments(batch["input_ids"], labels, batch["attention_mask"], ImageTokens.of(adapter))
    return adapter, attachment, batch, labels, segments


def _forward(setup, schedule: ScheduleState):
    adapter, attachment, batch, labels, segments = setup
    attachment.modules.zero_grad(set_to_none=True)
    with routing(TrainingRouting(segments, schedule, keys=[0, 1])) as ctx:
        logits = adapter.model(**batch).logits
    out = roe_objective(per_example_ce(logits, labels), ctx.soft_skip(), rho=0.3, lam=1.0, gamma=5.0)
    out["loss"].backward()
    return ctx, logits


def test_stage0_skips_at_random_and_gives_no_router_gradient(setup):
    _, attachment, *_ = setup
    ctx, _ = _forward(setup, ScheduleState(stage=0, beta=random_skip_bias(0.3)))
    for layer in attachment.modules.layers.values():
        assert layer.router.weight.grad is None
        assert layer.adapter.up.weight.grad is not None
    p = torch.stack(list(ctx.p_skip.values()))
    valid = ctx.segments.valid_turns()
    beta = random_skip_bias(0.3)
    drawn = torch.stack([torch.sigmoid(1000.0 * (n[..., 1] - n[..., 0] - beta)) for n in ctx.noise.values()])
    assert torch.allclose(p[:, valid], drawn[:, valid], atol=1e-6)  # skip iff u1 > u0 + b(rho), at 1000x logits
    assert ((p[:, valid] < 1e-3) | (p[:, valid] > 1 - 1e-3)).float().mean() >= 0.75  # hard for most draws
    assert ctx.segments.n_turns == 2 and valid.tolist() == [[True, True], [True, False]]
    assert (p[:, ~valid] == 0).all()  # invalid turns execute


def test_later_stages_train_the_router_through_the_mixture(setup):
    _, attachment, *_ = setup
    ctx, _ = _forward(setup, ScheduleState(stage=1, tau=1.0, beta=0.2))
    assert all(
        layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
        for layer in attachment.modules.layers.values()
    )
    assert 0 < float(ctx.soft_skip().detach().mean()) < 1


def test_an_overwhelming_execute_bias_reproduces_the_dense_model(setup):
    adapter, _, batch, _, segments = setup
    with torch.no_grad():
        dense = adapter.model(**batch).logits
        with routing(TrainingRouting(segments, ScheduleState(stage=1, tau=1.0, beta=1e9))):
            executed = adapter.model(**batch).logits
        with routing(TrainingRouting(segments, ScheduleState(stage=2, tau=1e-3))):
            routed = adapter.model(**batch).logits
    assert torch.equal(executed, dense)
    assert not torch.equal(routed, dense)


def test_stage0_draws_follow_the_sample_not_its_batch_or_process(setup):
    """Each row's random skips are seeded by (seed, step, sample, layer): a sample draws the same skips in
    whichever process or batch position it lands, so data-parallel ranks agree with one process."""
    *_, segments = setup
    cpu = torch.device("cpu")

    def draws(keys, step=3, layer=1, seed=0):
        return TrainingRouting(segments, ScheduleState(stage=0, step=step), keys=keys, seed=seed).draw(
            layer, (len(keys), 2, 2), cpu
        )

    both, swapped = draws([5, 9]), draws([9, 5])
    assert torch.equal(both[0], swapped[1]) and torch.equal(both[1], swapped[0])
    assert torch.equal(draws([9])[0], both[1])
    for other in (draws([5, 9], step=4), draws([5, 9], layer=2), draws([5, 9], seed=1)):
        assert not torch.equal(other, both)


def test_the_straight_through_skip_rate_is_the_hard_rate_with_the_soft_gradient():
    """skip_estimate straight-through: the hinge reads the share of decisions over 1/2 (what inference skips), and
    its gradient is the soft rate's."""
    from dmole.stages.roe.segments import Segments

    turn = torch.tensor([[0, 1, 1, 2, 2], [0, 1, 1, -1, -1]])
    segments = Segments(turn, torch.tensor([[False, True, False, True, False], [False, True, False, False, False]]))
    logits = torch.tensor([[2.0, -1.0], [0.3, -3.0]], requires_grad=True)  # two layers, [B, n] each
    p = {1: torch.sigmoid(logits), 2: torch.sigmoid(-logits)}
    state = TrainingRouting(segments, ScheduleState(stage=2), p_skip=p)
    rate = state.straight_through_skip()
    valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    hard = sum(((q > 0.5).float() * valid).sum(1) / valid.sum(1) for q in p.values()) / 2
    assert torch.allclose(rate, hard)
    rate.sum().backward(retain_graph=True)
    straight = logits.grad.clone()
    logits.grad = None
    state.soft_skip().sum().backward()
    assert torch.equal(straight, logits.grad) and straight.abs().sum() > 0
