"""The spec's D-MoLE formulas on small hand-computed cases (spec/dmole.md §4, §6, §8, §9)."""

import itertools
import math

import numpy as np
import pytest
import torch

from dmole.stages.allocate import parse_budget
from dmole.stages.dmole.allocation import AllocationError, ScoredModule, allocate, split_modules
from dmole.stages.dmole.router import (
    Autoencoder,
    SingleTensorAdam,
    cosine_annealing,
    fit_router,
    flat_parameters,
    flushing_subnormals,
    quantile_table,
    reconstruction_errors,
    step_gradients,
    subnormals_flushed,
)
from dmole.stages.dmole.routing import (
    batch_vote,
    grouped_partner_votes,
    per_sample,
    training_partner,
    training_partner_vote,
    with_training_partner,
)
from dmole.stages.options import FitRouterOptions
from dmole.stages.training.loop import micro_batches


def modules(vision_scores, language_scores, width=4):
    return [ScoredModule(f"v.{i:02d}", "vision", s, width, width) for i, s in enumerate(vision_scores)] + [
        ScoredModule(f"l.{i:02d}", "language", s, width, width) for i, s in enumerate(language_scores)
    ]


@pytest.mark.parametrize("pi_vision, expected", [(0.2, (12, 36)), (0.4, (19, 29)), (0.1, (12, 36))])
def test_split_follows_the_spec_examples_and_floor(pi_vision, expected):
    # spec §6: with B = 48, pi_V = 0.2 gives 12 (the floor); 0.4 gives 19; a lower share still gets the floor.
    assert split_modules(48, pi_vision, 48, 48) == expected


def test_split_moves_excess_to_the_other_tower():
    assert split_modules(10, 0.9, 4, 20) == (4, 6)
    assert split_modules(10, 0.0, 20, 5) == (5, 5)


def test_allocation_takes_top_modules_per_tower_with_name_tie_break():
    scored = modules([1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 9.0, 1.0])
    result = allocate(scored, fraction=0.5)  # B = 4 of 8, pi_V = 7.5 / 21.5 -> round(1.395) = 1, floor 1
    assert (result.n_vision, result.n_language) == (1, 3)
    assert result.selected == sorted(["v.01", "l.02", "l.00", "l.01"])  # v.01 beats v.02 on the name
    assert result.pi_vision == pytest.approx(7.5 / 21.5)
    assert result.expert_parameters == 4 * 8 * (4 + 4)


def test_allocation_is_cumulative_over_tasks():
    scored = modules([1.0, 2.0], [3.0, 4.0])
    first = allocate(scored, fraction=0.5, task_id=1)
    second = allocate(scored, fraction=0.5, previous=first.cumulative, task_id=2)
    assert second.cumulative["l.01"] == [1, 2]
    assert all(len(ids) in (0, 2) for ids in second.cumulative.values())
    assert set(second.cumulative) == {m.module for m in scored}


def test_parameter_budget_takes_a_prefix_that_fits():
    scored = modules([4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0], width=4)  # each module costs 8 * 8 = 64
    result = allocate(scored, parameters=256, rank=8)  # pi_V = 0.5: 128 per tower -> 2 modules each
    assert (result.n_vision, result.n_language) == (2, 2)
    assert result.expert_parameters == 256


def test_allocation_errors_are_user_errors():
    with pytest.raises(AllocationError, match="every zero-cost score is 0"):
        allocate(modules([0.0], [0.0]), fraction=0.5)
    with pytest.raises(AllocationError, match="out of range"):
        allocate(modules([1.0], [1.0]), fraction=1.5)
    with pytest.raises(AllocationError, match="cannot hold"):
        allocate(modules([1.0], [1.0]), parameters=3)


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("0.5", (0.5, None)),
        ("1", (1.0, None)),
        ("2M", (None, 2_000_000)),
        ("500k", (None, 500_000)),
        ("120000", (None, 120_000)),
    ],
)
def test_budget_parsing(text, parsed):
    assert parse_budget(text) == parsed


@pytest.mark.parametrize("text", ["-0.5", "0", "abc", "1.5"])
def test_budget_parsing_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_budget(text)


def test_per_sample_routing_spec_example():
    # spec §9: tau = (0.010, 0.020, 0.015), e = (0.012, 0.018, 0.011)
    tau, errors = np.array([0.010, 0.020, 0.015]), np.array([[0.012, 0.018, 0.011]])
    assert per_sample(errors, tau) == [(3, 2)]
    assert per_sample(errors, tau, order="rank-then-filter") == [(3,)]
    assert per_sample(np.array([[0.5, 0.5, 0.5]]), tau) == [()]  # nobody accepts: the base model answers
    assert per_sample(errors, tau, scale=2.0) == [(3, 1)]


def test_batch_vote_spec_examples():
    tau = np.array([1.0, 1.0, 1.0])
    # ten samples: 6 vote for task 3, 3 for task 2, 1 abstains -> {3, 2} since 3/9 >= 0.3
    votes = [[0.9, 0.9, 0.1]] * 6 + [[0.9, 0.1, 0.9]] * 3 + [[2.0, 2.0, 2.0]]
    assert batch_vote(np.array(votes), tau) == (3, 2)
    # five samples: 4 vote for 3, 1 for 2 -> {3}, since 1/5 < 0.3
    assert batch_vote(np.array([[0.9, 0.9, 0.1]] * 4 + [[0.9, 0.1, 0.9]]), tau) == (3,)
    assert batch_vote(np.array([[2.0, 2.0, 2.0]]), tau) == ()


def test_training_partner_is_the_lowest_error_accepted_past_task_ties_to_lower_id():
    tau = np.array([0.5, 0.5])
    errors = np.array([[0.1, 0.1], [0.9, 0.2], [0.9, 0.9]])
    assert training_partner(errors, tau) == [1, 2, None]
    assert training_partner_vote(errors, tau) == 1  # votes 1 and 2 tie: the lower id wins, 1/2 >= 0.3


def test_the_training_vote_is_taken_per_group_of_vote_size_whatever_the_accumulation():
    """The reference votes per device batch (10 on each of 8 GPUs): one process with a micro-batch of 80 must
    vote per 10 consecutive samples, as it does with --grad-accum 8 (micro-batches of 10)."""
    tau = np.array([0.5, 0.5])
    only_first, only_second = [0.1, 0.9], [0.9, 0.1]
    # a step of 80: eight groups of 10, accepted by task 1 only in the even groups and by task 2 in the odd ones
    errors = np.array([only_first if (i // 10) % 2 == 0 else only_second for i in range(80)])
    per_group = [1 if (i // 10) % 2 == 0 else 2 for i in range(80)]
    assert grouped_partner_votes(errors, tau, 10) == per_group
    # one vote over the whole micro-batch: a 40-40 tie that the lower id wins for every sample
    assert grouped_partner_votes(errors, tau, None) == [1] * 80
    accumulated = [
        p for micro in micro_batches(list(range(80)), 8) for p in grouped_partner_votes(errors[micro], tau, None)
    ]
    assert accumulated == per_group
    assert [
        p for micro in micro_batches(list(range(80)), 2) for p in grouped_partner_votes(errors[micro], tau, 10)
    ] == per_group


def test_threshold_is_the_quantile_of_in_task_errors():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 16)).astype(np.float32)
    fitted = fit_router(data, FitRouterOptions(max_epochs=30, batch_size=64, quantile=0.9))
    errors = reconstruction_errors(fitted.model, data)
    assert fitted.threshold == pytest.approx(np.quantile(errors, 0.9))
    assert fitted.quantiles["q90"] == pytest.approx(fitted.threshold)
    assert (errors < fitted.threshold).mean() == pytest.approx(0.9, abs=0.01)


def test_adam_on_flat_parameters_equals_adam_per_parameter_bit_for_bit(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    data = torch.rand(96, 40)
    per_parameter, flat_model = Autoencoder(40, 24, "none"), Autoencoder(40, 24, "none")
    flat_model.load_state_dict(per_parameter.state_dict())

    def train(model, optimizer, zero):
        for step in range(60):
            batch = data[(step * 32) % 96 :][:32]
            loss = torch.nn.functional.mse_loss(model(batch), batch)
            zero()
            loss.backward()
            optimizer.step()

    optimizer = torch.optim.Adam(per_parameter.parameters(), lr=5e-3)
    train(per_parameter, optimizer, optimizer.zero_grad)
    with flat_parameters(flat_model) as flat:
        assert flat.numel() == sum(p.numel() for p in per_parameter.parameters())
        optimizer = torch.optim.Adam([flat], lr=5e-3)
        train(flat_model, optimizer, flat.grad.zero_)
    trained = flat_model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in per_parameter.state_dict().items())
    assert not torch.equal(trained["encoder.weight"], Autoencoder(40, 24, "none").state_dict()["encoder.weight"])
    assert len({p.untyped_storage().data_ptr() for p in flat_model.parameters()}) == 4  # own storage again
    save_file(trained, tmp_path / "router.safetensors")  # refuses tensors that share memory
    assert torch.equal(load_file(tmp_path / "router.safetensors")["decoder.bias"], trained["decoder.bias"])


@pytest.mark.parametrize("activation", ["none", "sigmoid"])
def test_step_gradients_equal_autograd_bit_for_bit_over_a_training_run(activation):
    torch.manual_seed(0)
    data = torch.randn(96, 40)
    data = data / data.norm(dim=1, keepdim=True)  # the routers' input: L2-normalised, negative entries included
    autograd, direct = Autoencoder(40, 24, activation), Autoencoder(40, 24, activation)
    direct.load_state_dict(autograd.state_dict())
    for p in direct.parameters():
        p.grad = torch.full_like(p, 7.0)  # overwritten, not accumulated into
    by_autograd, by_hand = (
        torch.optim.Adam(autograd.parameters(), lr=5e-3),
        torch.optim.Adam(direct.parameters(), lr=5e-3),
    )
    for step in range(40):
        batch = data[(step * 32) % 96 :][:32]
        loss = torch.nn.functional.mse_loss(autograd(batch), batch)
        by_autograd.zero_grad()
        loss.backward()
        assert torch.equal(step_gradients(direct, batch), loss.detach())
        for a, b in zip(autograd.parameters(), direct.parameters()):
            assert torch.equal(a.grad, b.grad)
        by_autograd.step()
        by_hand.step()
    assert (autograd.encoder.weight.grad != 0).any() and (autograd.decoder.bias.grad != 0).any()
    assert all(torch.equal(a, b) for a, b in zip(autograd.parameters(), direct.parameters()))


@pytest.mark.parametrize("period", [1000, 4])
def test_cosine_annealing_is_torchs_scheduler_bit_for_bit_where_the_closed_form_is_not(period):
    epochs = 2 * period + 100  # past a whole period, into the branch where the rate climbs back
    holder = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([holder], lr=5e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=period, eta_min=1e-3)
    torchs = []
    for _ in range(epochs):
        torchs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = list(itertools.islice(cosine_annealing(5e-3, 1e-3, period), epochs))
    assert ours == torchs
    assert ours[period] == pytest.approx(1e-3) and ours[2 * period] == pytest.approx(5e-3)
    closed = [1e-3 + (5e-3 - 1e-3) * (1 + math.cos(math.pi * epoch / period)) / 2 for epoch in range(epochs)]
    assert closed != torchs


def test_single_tensor_adam_steps_bit_for_bit_as_torchs_adam_under_its_scheduler():
    torch.manual_seed(0)
    start = torch.randn(3000) * 0.1
    gradients = torch.randn(60, 3000) * torch.logspace(-6, 0, 3000)  # small to large, as a router's are
    gradients[20:, :500] = 0  # units that stop getting gradients: moments that only decay
    by_torch = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([by_torch], lr=5e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=1e-3)
    ours = torch.nn.Parameter(start.clone())
    ours.grad = torch.zeros_like(ours)
    adam, rates = SingleTensorAdam(ours), cosine_annealing(5e-3, 1e-3, 4)
    for epoch in range(20):  # three steps an epoch, the rate annealed per epoch over five periods
        rate = next(rates)
        for step in range(3):
            by_torch.grad = gradients[3 * epoch + step].clone()
            optimizer.step()
            ours.grad.copy_(gradients[3 * epoch + step])
            adam.step(rate)
        scheduler.step()
    state = optimizer.state[by_torch]
    assert torch.equal(ours, by_torch)
    assert torch.equal(adam.exp_avg, state["exp_avg"]) and torch.equal(adam.exp_avg_sq, state["exp_avg_sq"])
    assert (ours != start).all()


@pytest.mark.parametrize("outside", [False, True])
def test_subnormals_are_flushed_inside_and_the_mode_found_is_restored(outside):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    quarter_of_smallest_normal = torch.tensor(torch.finfo(torch.float32).tiny) / 4
    torch.set_flush_denormal(outside)
    try:
        assert flushing_subnormals() is outside
        with subnormals_flushed():
            assert flushing_subnormals()
            assert (quarter_of_smallest_normal * 1.0).item() == 0.0
        assert flushing_subnormals() is outside
        fit_router(np.random.default_rng(0).normal(size=(40, 8)), FitRouterOptions(hidden=4, max_epochs=2))
        assert flushing_subnormals() is outside
    finally:
        torch.set_flush_denormal(False)
    assert (quarter_of_smallest_normal * 1.0).item() > 0.0


def test_adam_ends_bit_for_bit_alike_when_its_subnormal_moments_are_flushed():
    """A router's dead hidden units: gradients that stop, and first moments that decay below float32's normals."""

    def train():
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(256) * 0.1)
        weight.grad = torch.randn(256) * 1e-3
        optimizer = SingleTensorAdam(weight)  # fit_router's Adam
        for step in range(810):
            if step == 10:
                weight.grad.zero_()
            optimizer.step(5e-3)
        return weight.detach().clone(), optimizer.exp_avg.clone()

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    plain_weight, plain_moment = train()
    with subnormals_flushed():
        flushed_weight, flushed_moment = train()
    subnormal = (plain_moment != 0) & (plain_moment.abs() < torch.finfo(torch.float32).tiny)
    assert subnormal.sum() > 200  # the premise: without flushing, the moments went subnormal
    assert (flushed_moment == 0).all()
    assert torch.equal(plain_weight, flushed_weight)


def test_quantile_table_on_a_hand_case():
    table = quantile_table(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert (table["min"], table["q50"], table["max"], table["mean"]) == (1.0, 3.0, 5.0, 3.0)
    assert table["q25"] == 2.0 and table["q75"] == 4.0  # linear interpolation


def test_ablation_rules_choose_by_their_definition():
    from dmole.stages.dmole.allocation import evenly_spread

    scored = modules([1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 9.0, 1.0])  # B = 4 of 8 at fraction 0.5
    assert allocate(scored, fraction=0.5, rule="vision-only").selected == ["v.00", "v.01", "v.02", "v.03"]
    language = allocate(scored, fraction=0.5, rule="language-only")
    assert language.selected == ["l.00", "l.01", "l.02", "l.03"] and language.n_vision == 0
    # pooled: one ranking over both towers, no vision floor: 9, 3, 3, then 2 (l.00 before l.01 by name)
    assert allocate(scored, fraction=0.5, rule="pooled").selected == ["l.00", "l.02", "v.01", "v.02"]
    # uniform: evenly spread over the model's order, whatever the scores, at D-MoLE's parameter count
    uniform = allocate(scored, fraction=0.5, rule="uniform")
    assert uniform.selected == ["l.01", "l.03", "v.01", "v.03"] and uniform.n_vision == uniform.n_language == 2
    assert uniform.expert_parameters == allocate(scored, fraction=0.5).expert_parameters
    rescored = modules([9.0, 0.0, 0.0, 9.0], [0.1, 5.0, 0.0, 7.0])
    assert allocate(rescored, fraction=0.5, rule="uniform").selected == uniform.selected
    assert [m.module for m in evenly_spread(scored, 3)] == ["v.01", "l.00", "l.02"]
    # a parameter budget holds as many evenly spread modules as fit (each costs 8 * (4 + 4) = 64)
    assert allocate(scored, parameters=200, rule="uniform").expert_parameters == 3 * 64
    assert allocate(scored, parameters=130, rule="vision-only").selected == ["v.01", "v.02"]
    with pytest.raises(AllocationError, match="unknown allocation rule"):
        allocate(scored, fraction=0.5, rule="random")


def test_a_second_expert_within_the_margin_of_the_first():
    from dmole.stages.dmole.routing import confidence_weights

    tau = np.array([1.0, 1.0, 1.0])
    errors = np.array(
        [
            [0.1, 0.9, 2.0],  # the second only just accepted: 0.9 > 2 x 0.1
            [0.3, 0.5, 2.0],  # 0.5 <= 2 x 0.3: a real second match
            [0.8, 0.4, 0.9],
        ]
    )  # first is task 2 (0.4); task 1 at 0.8 <= 0.8 joins
    assert per_sample(errors, tau) == [(1, 2), (1, 2), (2, 1)]
    assert per_sample(errors, tau, second_margin=2.0) == [(1,), (1, 2), (2, 1)]
    weights = confidence_weights(errors[0], tau, (1, 2))
    assert weights[1] == pytest.approx(0.9) and weights[2] == pytest.approx(0.1)
    assert confidence_weights(errors[1], tau, (1,)) == {1: 1.0}


def test_the_partner_rule_adds_the_first_task_s_training_partner_only():
    tau = np.array([0.010, 0.020, 0.015])
    # the spec's example: 3 and 2 accept; 3 is first, and of the routers before it 2 accepts at its own threshold
    assert with_training_partner(np.array([[0.012, 0.018, 0.011]]), tau) == [(3, 2)]
    # 1 is first: a later router that accepts (3) was never beside expert 1 in training, so it does not join
    assert with_training_partner(np.array([[0.001, 0.030, 0.002]]), tau) == [(1,)]
    # no router accepts: the base model answers
    assert with_training_partner(np.array([[0.5, 0.5, 0.5]]), tau) == [()]


def test_the_eval_scale_loosens_the_first_expert_but_not_the_partner():
    """train-task chose partners at the routers' own thresholds; the evaluation's scale must not invent new ones."""
    tau = np.array([0.01, 0.01])
    errors = np.array([[0.05, 0.001]])
    assert with_training_partner(errors, tau, scale=10) == [(2,)]
    assert per_sample(errors, tau * 10) == [(2, 1)]  # the paper's top-2 would add expert 1


def test_the_partner_is_what_training_chose_for_that_input():
    rng = np.random.default_rng(0)
    tau = rng.uniform(0.5, 1.5, size=5)
    errors = rng.uniform(0.0, 2.0, size=(400, 5))
    for row, route in zip(errors, with_training_partner(errors, tau, scale=1.3)):
        accepted = [k for k in np.argsort(row, kind="stable") + 1 if row[k - 1] < 1.3 * tau[k - 1]]
        assert route[:1] == tuple(accepted[:1])
        if route:
            first = route[0]
            past = [k for k in range(1, first) if row[k - 1] < tau[k - 1]]
            expected = min(past, key=lambda k: (row[k - 1], k)) if past else None
            assert route[1:] == ((expected,) if expected else ())


def test_relative_ranking_orders_the_accepting_routers_by_error_over_threshold():
    """Router 2's errors run ten times router 1's: raw errors always prefer 1, relative errors the better fit."""
    tau = np.array([0.010, 0.100])
    errors = np.array([[0.008, 0.030]])  # 0.8 of tau_1, 0.3 of tau_2
    assert per_sample(errors, tau, top=1) == [(1,)]
    assert per_sample(errors, tau, top=1, relative=True) == [(2,)]
    assert with_training_partner(errors, tau, relative=True) == [(2, 1)]  # 1 accepts: expert 2's partner
    assert per_sample(errors, tau, top=1, relative=True, scale=0.5) == [(2,)]  # 1 no longer accepts
