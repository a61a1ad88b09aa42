"""The redundancy prior (route-train's ``router_prior: redundancy``; a dmole addition, not in the reference).

Before training, the untouched model runs dense on a seeded sample of the training data and each layer's
redundancy is measured as in static dropping (`fixed.layer_change`: mean cos(input, output) over real tokens).
The round(ρ·|L_r|) most redundant routable layers get the skip-logit offset +margin, the others −margin. The
offset is a fixed buffer added to the router's logits in training and at inference (`layer.router_logits`), so
with the router's own output at zero the model starts from static dropping at the target rate; the routers, the
hinge and the temperature schedule are unchanged and learn per-example departures from it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..options import RouteTrainOptions
from .fixed import layer_change, least_change_layers
from .modules import RoEModules


def measure_change(
    adapter, samples: Sequence, count: int, seed: int, batch_size: int, around: Callable | None = None
) -> list[float]:
    """Per LM layer, `layer_change` on ``count`` training samples drawn with ``seed`` (the model runs dense);
    ``around(indices, batch)``, if given, is the context each batch runs in, as in training (a continual model's
    experts, routed to the samples at those indices of ``samples``)."""
    from ..training.chat import chat_examples

    # the indices random.sample would pick from the samples themselves: it draws positions from the length alone
    picked = random.Random(f"{seed}-static-layers").sample(range(len(samples)), min(count, len(samples)))
    chunks = [picked[i : i + batch_size] for i in range(0, len(picked), batch_size)]
    batches = [adapter.train_batch(chat_examples([samples[i] for i in chunk])) for chunk in chunks]
    contexts = None if around is None else [partial(around, chunk, batch) for chunk, batch in zip(chunks, batches)]
    with torch.no_grad():
        return layer_change(adapter, batches, contexts)


def redundancy_offsets(change: Sequence[float], routable: Sequence[int], rho: float, margin: float) -> dict[int, float]:
    """+margin for the round(ρ·|routable|) least-changing routable layers, −margin for the others."""
    chosen = set(least_change_layers(change, routable, round(rho * len(routable))))
    return {layer: margin if layer in chosen else -margin for layer in routable}


def apply_router_prior(
    adapter, modules: RoEModules, samples: Sequence, settings: RouteTrainOptions, seed: int, around=None
) -> dict[int, float] | None:
    """Set ``modules``' priors as ``settings.router_prior`` asks, measured on ``adapter`` as it is now (call it
    before training, with no routing active; ``around`` as in training, for a continual model); the offsets per
    layer, or None for ``none``."""
    if settings.router_prior == "none":
        return None
    change = measure_change(adapter, samples, settings.prior_samples, seed, settings.eval_batch_size, around)
    offsets = redundancy_offsets(change, modules.shape.routable, settings.skip_ratio, settings.prior_margin)
    modules.set_priors(offsets)
    return offsets
