"""A D-MoLE training step against a plain PEFT LoRA step with the same trainable parameters, side by side.

Shared by `dmole_bench.py` (the demo's allocations, on the CPU) and `gpu_bench.py` (InternVL2-2B's shapes).
Shared too by `step_ratio_width.py` (InternVL2-2B's language-model width, on the CPU). Three steps run interleaved on
the same batch: the D-MoLE step (the new expert trainable, a frozen past expert routed into every sample through the
mask hooks), the plain PEFT step, and the D-MoLE step with only its own expert routed in (what the routing machinery
alone costs); optionally a fourth, the D-MoLE step with one dropout mask per module for both experts
(train-task's ``dropout_mask: shared``). Several LoRA settings (with and without dropout) interleave in one run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch

from dmole.stages.dmole.experts import ExpertModel, LoraSettings
from dmole.stages.methods.lora import towers


def sync() -> None:
    """Wait for the GPU's queued work, so a timer reads finished work (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ratio(a: list[float], b: list[float]) -> dict:
    """The medians of two interleaved series of timings and their ratio, and ``paired_ratio``: the median of each
    round's a / b. A round's two timings are seconds apart, so a shared host whose speed drifts over a run moves the
    paired ratio less than the ratio of medians."""
    return {
        "median_a_s": statistics.median(a),
        "median_b_s": statistics.median(b),
        "ratio": statistics.median(a) / statistics.median(b),
        "paired_ratio": statistics.median(x / y for x, y in zip(a, b, strict=True)),
    }


def attention_experts(adapter, tower: str | None = None) -> tuple[list[str], list[str]]:
    """The step comparison's expert placement on a model's attention projections (of one ``tower``, or both):
    the past expert on every other layer's, the new one on all of them."""
    candidates = [c for c in adapter.candidates(include_mlp=False) if tower in (None, c.tower)]
    return [c.name for c in candidates if c.layer % 2 == 0], [c.name for c in candidates]


def step_ratios(
    load: Callable[[], object],
    partner_modules: Sequence[str],
    own_modules: Sequence[str],
    examples: list,
    loras: Mapping[str, LoraSettings],
    repeats: int,
    *,
    shared_mask: bool = False,
    warmup: int = 2,
) -> dict[str, dict]:
    """Per named LoRA setting of ``loras``, the D-MoLE step against the plain PEFT step, all settings' steps
    interleaved in every round. ``load()`` gives a fresh family adapter (two per setting: one model for D-MoLE,
    one for plain PEFT; a third with ``shared_mask`` where the setting has dropout: D-MoLE with one dropout mask
    per module, `module_dropout`); every step trains on the one batch of ``examples`` (chat examples)."""
    from peft import get_peft_model

    steps: dict[tuple[str, str], Callable[[], None]] = {}
    batch: dict | None = None
    counts: dict[str, int] = {}
    for name, lora in loras.items():
        variants = (False, True) if shared_mask and lora.dropout > 0 else (False,)
        for shared in variants:
            adapter = load()
            batch = batch if batch is not None else adapter.train_batch(examples)
            experts = ExpertModel(adapter.model, towers(adapter), shared_dropout=shared)
            experts.add_expert(1, partner_modules, lora)
            params = experts.add_expert(2, own_modules, lora)
            counts[name] = sum(p.numel() for p in params)
            optimizer = torch.optim.AdamW(params, lr=1e-4)
            experts.model.train()
            routes = {"shared_mask": (2, 1)} if shared else {"dmole": (2, 1), "own": (2,)}
            for label, route in routes.items():
                steps[name, label] = partial(_routed_step, experts, batch, optimizer, route)
        plain = get_peft_model(load().model, lora.config(own_modules))
        plain_params = [p for p in plain.parameters() if p.requires_grad]
        assert sum(p.numel() for p in plain_params) == counts[name]
        plain.train()
        steps[name, "plain"] = partial(_plain_step, plain, batch, torch.optim.AdamW(plain_params, lr=1e-4))
    order = ("dmole", "shared_mask", "plain", "own")  # within a setting; the single-setting order of earlier runs
    steps = dict(sorted(steps.items(), key=lambda item: (list(loras).index(item[0][0]), order.index(item[0][1]))))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for i in range(repeats + warmup):
        for key, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return {name: _summary(name, lora, times, counts[name], len(batch["input_ids"])) for name, lora in loras.items()}


def _routed_step(experts: ExpertModel, batch: dict, optimizer, route: tuple[int, ...]) -> None:
    with experts.routed([route] * len(batch["input_ids"])):
        experts.model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _plain_step(model, batch: dict, optimizer) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _summary(name: str, lora: LoraSettings, times: dict, trainable: int, rows: int) -> dict:
    result = median_ratio(times[name, "dmole"], times[name, "plain"])
    own = statistics.median(times[name, "own"])
    summary = {
        "batch": rows,
        "lora_dropout": lora.dropout,
        "trainable_parameters": trainable,
        **result,
        "a": "dmole step",
        "b": "plain PEFT LoRA step",
        "median_own_expert_s": own,
        "machinery_ratio": own / result["median_b_s"],
        "partner_ratio": result["median_a_s"] / own,
    }
    if (name, "shared_mask") in times:
        shared = statistics.median(times[name, "shared_mask"])
        summary.update(
            median_shared_mask_s=shared,
            shared_mask_ratio=shared / result["median_b_s"],
            shared_mask_partner_ratio=shared / own,
        )
    return summary


def step_ratio(
    load: Callable[[], object],
    partner_modules: Sequence[str],
    own_modules: Sequence[str],
    examples: list,
    lora: LoraSettings,
    repeats: int,
) -> dict:
    """`step_ratios` for one LoRA setting."""
    return step_ratios(load, partner_modules, own_modules, examples, {"": lora}, repeats)[""]
