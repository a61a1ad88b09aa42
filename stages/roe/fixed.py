"""RoE's baselines: routing that reads nothing of the example, with the same skip adapters trained in its place.

- ``static``: the same layers skipped for every example (layer dropping). `least_change_layers` picks them on
  training data: the routable layers whose output changes their input least (highest mean cosine similarity
  between a layer's input and output states, over the real tokens).
- ``random``: each (example, layer) skipped independently at ``rate``, from a generator seeded by (seed, key,
  layer), so a sample's draw does not depend on its batch; in training the draw is new at every step (as
  RoE's stage 0 draws), at inference it is fixed per test sample.

Both replace the routers in training (every stage, so the adapters and in stage 2 the backbone learn the
baseline's own skips) and at inference (a forced plan); the schedule, data, groups and learning rates are RoE's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .plan import row_seed

FixedKind = Literal["static", "random"]


@dataclass(frozen=True)
class FixedRouting:
    kind: FixedKind
    layers: tuple[int, ...] = ()  # static: the layers every example skips
    rate: float = 0.0  # random: the probability that an (example, layer) is skipped
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind == "random" and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"random routing rate {self.rate} is outside [0, 1]")

    def skips(self, keys: Sequence[Hashable], layer: int, step: int = -1) -> Tensor:
        """[B] bool: whether each keyed example skips ``layer`` (at training step ``step``; -1 at inference)."""
        if self.kind == "static":
            return torch.full((len(keys),), layer in self.layers)
        return torch.tensor(
            [random.Random(row_seed(self.seed, step, key, layer)).random() < self.rate for key in keys],
            dtype=torch.bool,
        )

    def forced(self, keys: Sequence[Hashable], routable: Sequence[int]) -> dict[int, Tensor]:
        """The inference plan's decisions for a batch: routable layer -> [B] bool skip."""
        return {layer: self.skips(keys, layer) for layer in routable}

    def to_json(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "rate": self.rate, "seed": self.seed}


@torch.no_grad()
def layer_change(adapter, batches: Sequence[dict], contexts: Sequence[Callable] | None = None) -> list[float]:
    """Per LM layer, the mean over real tokens of cos(input, output) of the layer: 1 means the layer leaves its
    input unchanged. ``batches`` are model inputs (``train_inputs`` on the device); the model runs dense, each
    batch inside ``contexts[i]()`` where given (a continual model's experts, routed to the batch's samples)."""
    layers = adapter.language_layers()
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    seen: dict = {}  # the current batch's real-token mask, and each layer's input until its output arrives

    def keep_input(index: int, args: tuple, kwargs: dict) -> None:
        seen[index] = args[0] if args else kwargs["hidden_states"]

    def add_similarity(index: int, out) -> None:
        after = out[0] if isinstance(out, tuple) else out
        cos = torch.nn.functional.cosine_similarity(seen.pop(index).float(), after.float(), dim=-1)
        sums[index] += float(cos[seen["mask"]].double().sum())

    hooks = []
    for index, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(lambda _m, a, kw, i=index: keep_input(i, a, kw), with_kwargs=True))
        hooks.append(layer.register_forward_hook(lambda _m, _a, out, i=index: add_similarity(i, out)))
    try:
        for i, batch in enumerate(batches):
            seen["mask"] = batch["attention_mask"].bool()
            with contexts[i]() if contexts is not None else nullcontext():
                adapter.model(**{k: v for k, v in batch.items() if k != "labels"})
            count += int(seen["mask"].sum())
    finally:
        for hook in hooks:
            hook.remove()
    return (sums / max(count, 1)).tolist()


def least_change_layers(change: Sequence[float], routable: Sequence[int], k: int) -> tuple[int, ...]:
    """The ``k`` routable layers with the highest input-output similarity (ties: the later layer), sorted."""
    ranked = sorted(routable, key=lambda layer: (-change[layer], -layer))
    return tuple(sorted(ranked[:k]))
