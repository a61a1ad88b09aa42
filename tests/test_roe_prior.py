"""The redundancy prior (route-train's router_prior: redundancy): the round(ρ·|L_r|) least-changing routable layers
get +margin on the skip logit and the others −margin; the offset is added to the router's logits in training and at
inference, so with a silent router the model skips exactly those layers for every example; it is saved with the
weights (older files load with no offset); and τ₀ is route-train's option."""

from __future__ import annotations

import random

import pytest
import torch

from dmole.stages.models.registry import load_family
from dmole.stages.options import RouteTrainOptions
from dmole.stages.roe.attach import attach, roe_shape
from dmole.stages.roe.fixed import layer_change
from dmole.stages.roe.layer import router_logits
from dmole.stages.roe.modules import RoEModules, RoEShape
from dmole.stages.roe.prior import apply_router_prior, measure_change, redundancy_offsets
from dmole.stages.roe.schedule import StageSchedule
from tiny_sizes import small_lm, tiny_roe_project

SIZE = small_lm(6)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_roe_project(tmp_path_factory.mktemp("roe-prior"), SIZE)


def test_redundancy_offsets_favour_the_least_changing_layers():
    change = [0.1, 0.95, 0.50, 0.99, 0.97, 0.20, 0.98]
    routable = [1, 2, 3, 4, 5, 6]
    offsets = redundancy_offsets(change, routable, rho=0.5, margin=2.0)
    # round(0.5 * 6) = 3 layers, the highest cosines among the routable ones: 3 (0.99), 6 (0.98), 4 (0.97)
    assert offsets == {1: -2.0, 2: -2.0, 3: 2.0, 4: 2.0, 5: -2.0, 6: 2.0}
    assert set(redundancy_offsets(change, routable, rho=0.0, margin=1.0).values()) == {-1.0}


def test_router_logits_add_the_fixed_prior():
    modules = RoEModules(RoEShape(d_model=8, rank=2, n_layers=3, routable=(1, 2)))
    modules.set_priors({1: 1.5, 2: -0.5})
    assert modules.priors() == {1: 1.5, 2: -0.5}
    assert all(
        not any(name.endswith("prior") for name, _ in layer.named_parameters()) for layer in modules.layers.values()
    )  # a buffer: never in an optimizer group
    summaries = torch.randn(3, 2, 8)  # [B, 1 + n, D]: the prefix and one turn
    routed = modules.layers["1"]
    expected = torch.cat([summaries[:, 0], summaries[:, 1]], dim=-1) @ routed.router.weight.T.float()
    z = router_logits(routed, summaries)[:, 0]
    assert torch.allclose(z, expected + torch.tensor([0.0, 1.5]), atol=1e-6)


def test_prior_is_saved_and_old_files_load_without_it():
    modules = RoEModules(RoEShape(d_model=8, rank=2, n_layers=3, routable=(1, 2)))
    modules.set_priors({1: 1.0, 2: -1.0})
    tensors = modules.named_tensors()
    assert torch.equal(tensors["roe.layers.1.prior"], torch.tensor([0.0, 1.0]))
    again = RoEModules(modules.shape)
    again.load_named_tensors(tensors)
    assert again.priors() == {1: 1.0, 2: -1.0}
    old = RoEModules(modules.shape)
    old.load_named_tensors({k: v for k, v in tensors.items() if not k.endswith(".prior")})
    assert old.priors() == {1: 0.0, 2: 0.0}


def test_with_a_silent_router_the_prior_skips_the_least_changing_layers_for_every_example(project):
    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.roe.evaluation import eval_sets, evaluate_routed
    from dmole.stages.training.chat import chat_examples

    adapter = load_family(project.model_path, device="cpu")
    samples = [s for task in project.config.tasks for s in load_train_samples(project.data_root, task)]
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0])))
    routable = attachment.modules.shape.routable
    settings = RouteTrainOptions(
        skip_ratio=0.4, router_prior="redundancy", prior_margin=0.5, prior_samples=6, eval_batch_size=3
    )
    offsets = apply_router_prior(adapter, attachment.modules, samples, settings, seed=7)
    # independently: the same seeded draw on a fresh copy of the base, and its layer_change computed directly
    change = measure_change(load_family(project.model_path, device="cpu"), samples, 6, 7, 3)
    ranked = sorted(routable, key=lambda l: (-change[l], -l))
    k = round(0.4 * len(routable))
    assert {l for l, v in offsets.items() if v > 0} == set(ranked[:k])
    assert all(offsets[l] == -0.5 for l in ranked[k:])
    picked = random.Random("7-static-layers").sample(samples, 6)
    direct = layer_change(adapter, [adapter.train_batch(chat_examples(picked[i : i + 3])) for i in (0, 3)])
    assert change == pytest.approx(direct, abs=1e-6)
    with torch.no_grad():
        for layer in attachment.modules.layers.values():
            layer.router.weight.zero_()
    _, rows = evaluate_routed(adapter, attachment, eval_sets(project, 2), 2, "gather", run_id="prior")
    assert rows and all(r["applied_skip"] == (offsets[r["layer"]] > 0) for r in rows if r["routable"])


def test_tau0_is_the_temperature_at_the_start_of_stage_1():
    schedule = StageSchedule(total=1000, rho=0.3, tau0=1.0)
    assert schedule.tau(schedule.s1) == pytest.approx(0.95)  # n(s₁) = 1
    assert schedule.tau(schedule.s1 + 10 * schedule.interval) == pytest.approx(0.95**11)
    assert RouteTrainOptions().tau0 == 10.0 and RouteTrainOptions().router_prior == "none"  # the spec's defaults
