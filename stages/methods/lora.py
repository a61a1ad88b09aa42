"""The LoRA machinery the methods share (heavy: torch and PEFT): building their adapters on the workspace model,
training them through `ExpertModel`'s per-sample routing (`lora_trainer.py`) and loading them back."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dmole.artifacts import Version
from dmole.artifacts.io import read_json

from ..dmole.experts import ExpertModel, LoraSettings, adapter_name
from ..errors import UserError
from ..registry import ALLOCATE, TRAIN_TASK
from .base import EvalPlan, TrainRun, parity_allocations
from .lora_trainer import SIDECAR, LoraTrainer


def towers(adapter) -> dict[str, str]:
    """Tower of every attention and MLP projection: where any expert or baseline adapter may sit."""
    return {c.name: c.tower for c in adapter.candidates(include_mlp=True)}


def groups(adapter) -> dict[str, tuple[str, ...]]:
    """Every ``qkv`` group candidate (a layer's q, k and v read as one projection) and its member modules."""
    return {c.name: c.members for c in adapter.candidates(include_mlp=True, fuse=True) if c.members}


QV_KINDS = frozenset({"q", "v", "qkv"})  # O-LoRA's q and v; a tower that fuses them (Qwen's ViT) has one qkv


def target_projections(adapter, targets: str = "all") -> list[str]:
    """Every attention and MLP projection of both towers, or with ``targets="qv"`` their q and v projections (ask
    before an adapter wraps them)."""
    return [c.name for c in adapter.candidates(include_mlp=True) if targets == "all" or c.kind in QV_KINDS]


def all_projections(adapter) -> list[str]:
    return target_projections(adapter)


def expert_folder(version: Version) -> Path:
    version.file(f"{TRAIN_TASK.files.expert}/adapter_model.safetensors")  # checksum-verified before PEFT reads it
    return version.path / TRAIN_TASK.files.expert


def lora_settings(run: TrainRun) -> LoraSettings:
    """A baseline's adapter settings: its hyperparameters' LoRA, a DoRA under ``--expert-type dora``."""
    hyper = run.hyper
    return LoraSettings(hyper.rank, hyper.alpha, hyper.dropout, run.options.expert_type == "dora")


def parity_shape(units: Sequence[int], overheads: Sequence[int], budget: int, step: int = 1) -> tuple[int, int]:
    """``(rank, n)``: an adapter of ``rank`` (a multiple of ``step``) on the first ``n`` of some modules, module i
    costing ``rank * units[i] + overheads[i]`` parameters, as large as possible but not above ``budget``: every
    module at the largest rank that fits, or when even rank ``step`` does not fit on all, rank ``step`` on as many
    leading modules as fit."""
    rank = (budget - sum(overheads)) // (step * sum(units)) * step
    if rank >= step:
        return rank, len(units)
    spent = itertools.accumulate(step * unit + overhead for unit, overhead in zip(units, overheads))
    n = sum(1 for cost in spent if cost <= budget)
    if not n:
        raise UserError(f"D-MoLE's {budget} trainable parameters are fewer than one rank-{step} adapter on one module")
    return step, n


@dataclass
class Shape:
    """Where a baseline's adapter sits and its LoRA settings; ``budget`` is D-MoLE's count it matches (parity)."""

    lora: LoraSettings
    modules: list[str]
    budget: int | None = None

    def summary(self) -> dict:
        return {} if self.budget is None else {"dmole_parameters": self.budget}


def baseline_shape(
    run: TrainRun, adapter, modules: Sequence[str], *, step: int = 1, overhead: Callable[[int], int] = lambda d_in: 0
) -> Shape:
    """A baseline's adapter: its hyperparameters' LoRA on ``modules`` or, under ``parity``, the rank (a multiple of
    ``step``; alpha scaled to keep alpha / rank) and leading modules (`parity_shape`) whose trainable parameters
    come closest to D-MoLE's for the task without exceeding them (for joint, the mean over the tasks).
    ``overhead(d_in)`` is what a module costs besides its LoRA (MoELoRA's router; a DoRA's magnitudes come on top)."""
    lora = lora_settings(run)
    if not run.hyper.parity:
        return Shape(lora, list(modules))
    counts = [read_json(v.file(ALLOCATE.files.arch))["expert_parameters"] for v in parity_allocations(run)]
    budget = sum(counts) // len(counts)
    sizes = {c.name: c for c in adapter.candidates(include_mlp=True)}
    rank, n = parity_shape(
        [sizes[m].d_in + sizes[m].d_out for m in modules],
        [overhead(sizes[m].d_in) + (sizes[m].d_out if lora.dora else 0) for m in modules],
        budget,
        step,
    )
    return Shape(replace(lora, rank=rank, alpha=lora.alpha * rank / lora.rank), list(modules)[:n], budget)


def expert_model(
    project,
    adapter,
    base: torch.nn.Module | None = None,
    loaded: Mapping[int, Version] | None = None,
    shared_dropout: bool = False,
) -> ExpertModel:
    """The base (or ``base``) with the trained adapters ``loaded`` (adapter id -> train-task artifact), frozen;
    ``shared_dropout``: its experts share one dropout mask per module forward."""
    experts = ExpertModel(
        adapter.model if base is None else base,
        towers(adapter),
        str(project.model_path),
        groups(adapter),
        shared_dropout=shared_dropout,
    )
    for task_id, version in (loaded or {}).items():
        folder = expert_folder(version)
        experts.load_expert(task_id, folder, read_json(folder / SIDECAR).get("shared_a"))
    return experts


def merged_model(adapter, versions: Sequence[Version]) -> torch.nn.Module:
    """The base with the adapters of ``versions`` merged into its weights, in order (fp32), frozen."""
    from peft import PeftModel

    model = adapter.model
    for version in versions:
        model = PeftModel.from_pretrained(model, expert_folder(version)).merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def continue_from(experts: ExpertModel, source: int, target: int) -> None:
    """Start adapter ``target`` from adapter ``source``'s weights (one LoRA continued across tasks)."""
    params = dict(experts.model.named_parameters())
    old, new = f".{adapter_name(source)}.", f".{adapter_name(target)}."
    with torch.no_grad():
        for name, param in params.items():
            if new in name:
                param.copy_(params[name.replace(new, old)])


def fresh_trainer(run: TrainRun, adapter, trainer_class: type[LoraTrainer] = LoraTrainer) -> LoraTrainer:
    """A fresh adapter on the base, on every projection, each sample routed to it alone (adapter ``run.task_id``)."""
    return trainer_class.shaped(
        run,
        adapter,
        expert_model(run.project, adapter),
        baseline_shape(run, adapter, all_projections(adapter)),
        [(run.task_id,)] * len(run.samples),
    )


def routed_plan(
    project,
    adapter,
    tasks: list[str],
    loaded: Mapping[int, Version],
    route: tuple[int, ...],
    base: torch.nn.Module | None = None,
) -> EvalPlan:
    """Every test sample of ``tasks`` through the adapters ``loaded``, routed to ``route`` (a fixed expert set)."""
    experts = expert_model(project, adapter, base, loaded)
    return EvalPlan(
        experts.model,
        tasks,
        routes_for=lambda task, samples, options, split="test": ([route] * len(samples), None),
        around=experts_around(experts, adapter),
    )


def experts_around(experts: ExpertModel, adapter):
    """``around(routes)`` for an `EvalPlan`: each generate batch runs with its samples' routed experts."""

    def around(routes: list):
        return lambda indices, inputs: experts.routed(
            [routes[i] for i in indices], vision_rows=adapter.vision_row_samples(inputs)
        )

    return around


def continued_shape(method, run: TrainRun, adapter, previous: Version | None) -> Shape:
    """The shape of one LoRA continued across tasks: chosen at the first task, task t-1's after it (under parity
    too: a continued LoRA cannot change its rank); without parity the hyperparameters must agree with it."""
    if previous is None:
        return baseline_shape(run, adapter, all_projections(adapter))
    saved = read_json(previous.file(f"{TRAIN_TASK.files.expert}/{SIDECAR}"))
    lora = lora_settings(run)
    if saved.get("expert_type", "lora") != lora.expert_type:
        raise UserError(
            f"{method.name} continues one adapter, but {previous} is a {saved.get('expert_type', 'lora')}, "
            f"not a {lora.expert_type}"
        )
    if run.hyper.parity != ("dmole_parameters" in saved) or (
        not run.hyper.parity and (saved["rank"], saved["alpha"]) != (lora.rank, lora.alpha)
    ):
        raise UserError(
            f"{method.name} continues one LoRA, but {previous} has rank {saved['rank']} and alpha "
            f"{saved['alpha']} (parity {'dmole_parameters' in saved}), not {lora.rank} and {lora.alpha} "
            f"(parity {run.hyper.parity})"
        )
    return Shape(
        replace(lora, rank=saved["rank"], alpha=saved["alpha"]), saved["target_modules"], saved.get("dmole_parameters")
    )


def continued_trainer(method, run: TrainRun, adapter, trainer: type[LoraTrainer] = LoraTrainer) -> LoraTrainer:
    """One LoRA continued across tasks: adapter t starts from task t-1's trained adapter (loaded, frozen, beside
    it, so a method can use the previous model), on every projection, each sample routed to adapter t."""
    previous = method.previous(run.project, run.task_id)
    loaded = {run.task_id - 1: previous} if previous is not None else {}
    shape = continued_shape(method, run, adapter, previous)  # before any adapter wraps the projections
    trainer = trainer.shaped(
        run,
        adapter,
        expert_model(run.project, adapter, loaded=loaded),
        shape,
        [(run.task_id,)] * len(run.samples),
        previous=previous,
    )
    if previous is not None:
        continue_from(trainer.experts, run.task_id - 1, run.task_id)
    return trainer
