"""A D-MoLE training step against a plain PEFT LoRA step with the same trainable parameters, side by side.

Shared by `dmole_bench.py` (the demo's allocations, on the CPU) and `gpu_bench.py` (InternVL2-2B's shapes).
Three steps run interleaved on the same batch: the D-MoLE step (the new expert trainable, a frozen past expert
routed into every sample through the mask hooks), the plain PEFT step, and the D-MoLE step with only its own
expert routed in (what the routing machinery alone costs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from dmole.stages.dmole.experts import ExpertModel, LoraSettings
from dmole.stages.methods.lora import towers


def sync() -> None:
    """Wait for the GPU's queued work, so a timer reads finished work (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ratio(a: list[float], b: list[float]) -> dict:
    return {
        "median_a_s": statistics.median(a),
        "median_b_s": statistics.median(b),
        "ratio": statistics.median(a) / statistics.median(b),
    }


def step_ratio(
    load: Callable[[], object],
    partner_modules: Sequence[str],
    own_modules: Sequence[str],
    examples: list,
    lora: LoraSettings,
    repeats: int,
) -> dict:
    """``load()`` gives a fresh family adapter (called twice: one model for D-MoLE, one for plain PEFT); every
    step trains on the one batch of ``examples`` (chat examples)."""
    from peft import get_peft_model

    dmole_adapter = load()
    batch = dmole_adapter.train_batch(examples)
    experts = ExpertModel(dmole_adapter.model, towers(dmole_adapter))
    experts.add_expert(1, partner_modules, lora)
    dmole_params = experts.add_expert(2, own_modules, lora)
    plain = get_peft_model(load().model, lora.config(own_modules))
    plain_params = [p for p in plain.parameters() if p.requires_grad]
    assert sum(p.numel() for p in dmole_params) == sum(p.numel() for p in plain_params)
    optimizers = (torch.optim.AdamW(dmole_params, lr=1e-4), torch.optim.AdamW(plain_params, lr=1e-4))
    experts.model.train()
    plain.train()
    rows = len(batch["input_ids"])

    def routed_step(route: tuple[int, ...]) -> None:
        with experts.routed([route] * rows):
            experts.model(**batch).loss.backward()
        optimizers[0].step()
        optimizers[0].zero_grad()

    def plain_step() -> None:
        plain(**batch).loss.backward()
        optimizers[1].step()
        optimizers[1].zero_grad()

    steps = (lambda: routed_step((2, 1)), plain_step, lambda: routed_step((2,)))
    times: tuple[list[float], ...] = ([], [], [])
    for i in range(repeats + 2):  # two warm-up rounds
        for which, step in enumerate(steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            if i >= 2:
                times[which].append(time.perf_counter() - start)
    result = median_ratio(times[0], times[1])
    own = statistics.median(times[2])
    return {
        "batch": rows,
        "lora_dropout": lora.dropout,
        "trainable_parameters": sum(p.numel() for p in plain_params),
        **result,
        "a": "dmole step",
        "b": "plain PEFT LoRA step",
        "median_own_expert_s": own,
        "machinery_ratio": own / result["median_b_s"],
        "partner_ratio": result["median_a_s"] / own,
    }
