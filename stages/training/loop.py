"""One training loop for every recipe (pre-training, D-MoLE experts, baselines, RoE).

A recipe supplies the model, named parameter groups and a loss function of (model, batch of sample
indices); the loop owns the optimizer, the warm-up + cosine schedule, gradient clipping, the deterministic
data order, periodic resumable checkpoints, and a per-step log. Recipes that need more (RoE's stage
schedule) pass callbacks instead of copying the loop; ``loggers`` receive each step's log row as it is
written (live trackers, `stages/training/trackers.py`).

The model and optimizer go through accelerate's ``Accelerator.prepare``: in one process that changes
nothing; under a launcher it is data-parallel (DDP, or ZeRO-1/2 / FSDP NO_SHARD from the accelerate
config), each process taking its share of every global batch, so a step sees the same samples and the
same learning rate as in one process. ``batch_size`` is always the global batch of one optimizer step:
per device x devices x ``grad_accum`` micro-batches, and an accumulated step is the large-batch step.
"""

from __future__ import annotations

import itertools
import math
import random
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..distributed import FSDP2, all_gather_objects, is_main, my_share, parameter_sharding, rank_and_world
from ..errors import UserError
from ..options import trains_in_bf16
from ..progress import Progress, silent
from ..threads import thread_mismatch
from .checkpoint import LoadedState, load_checkpoint, rng_state, save_checkpoint
from .inputs import InputPipeline
from .settings import LoopSettings
from .sharding import ShardedCopy


@dataclass
class ParamGroup:
    name: str
    params: list[torch.nn.Parameter]
    lr: float | None = None  # None: the loop's lr


class Callback(Protocol):
    def on_step_begin(self, step: int, total: int, optimizer: torch.optim.Optimizer) -> None: ...
    def log_fields(self) -> dict[str, float]: ...


class GradientHook(Protocol):
    """Called once per optimizer step, when the step's gradients are complete (the global batch's mean, before
    clipping); ``state`` (name -> tensor) is what it accumulates, kept in resume checkpoints."""

    state: dict[str, torch.Tensor]

    def __call__(self) -> None: ...


@dataclass
class LoopResult:
    steps: int
    log: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    sharding: str | None = None  # "fsdp2" when the parameters were sharded across processes
    warnings: list[str] = field(default_factory=list)  # one line each, kept in the version's manifest


class TrainingFailed(UserError):
    """A run that must not be saved: it diverged (a loss or a trained parameter that is inf or nan), or nothing in
    it was supervised (every answer token cut away), so nothing was learned."""


def _check_step(loss: float, params: list[torch.nn.Parameter], accelerator, step: int, total: int) -> None:
    """Stop at the first step whose loss or updated parameters are not finite (every process stops alike: the
    loss is the reduced one, and the parameter flag is summed over processes, which may hold different shards)."""
    if not math.isfinite(loss):
        raise TrainingFailed(
            f"training diverged at step {step} of {total}: the loss is {loss}; nothing was saved "
            "(lower the learning rate or clip the gradients)"
        )
    local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in params]  # FSDP2: own shard
    broken = torch.stack([~torch.isfinite(t).all() for t in local]).sum().float()
    if float(accelerator.reduce(broken.to(accelerator.device), reduction="sum")):
        raise TrainingFailed(
            f"training diverged at step {step} of {total}: a trained parameter is inf or nan; "
            "nothing was saved (lower the learning rate or clip the gradients)"
        )


def _check_supervised(log: list[dict], warnings: list[str]) -> None:
    """A run whose steps all had nothing to learn (every answer cut away) is an error; some such steps, a warning."""
    empty = sum(1 for row in log if row.get("supervised") == 0)  # (a checkpoint's older rows may not say)
    if empty == len(log):
        raise TrainingFailed(
            f"nothing was learned: none of the {len(log)} steps had a supervised token (every "
            "answer was cut away; raise max_length); nothing was saved"
        )
    if empty:
        warnings.append(
            f"{empty} of {len(log)} steps had no supervised token (their answers were cut away by "
            "max_length) and changed nothing"
        )


# How many batches a length-sorted mega-batch spans (transformers' LengthGroupedSampler uses 50).
MEGABATCH_BATCHES = 50


def batch_plan(n_samples: int, settings: LoopSettings, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Sample indices per optimizer step: a seeded permutation per epoch, cut into batches.

    With ``settings.group_by_length`` (``lengths`` then required), each epoch's permutation is cut into
    mega-batches of ``MEGABATCH_BATCHES`` batches, each sorted by length, longest first, as transformers'
    LengthGroupedSampler does; the batch holding the longest sample comes first, so memory runs out early
    if it must. Fractional epochs take a prefix of the last epoch's batches. The plan is a pure function
    of its arguments, so a resumed run continues with exactly the batches it would have seen.
    """
    if settings.group_by_length and (lengths is None or len(lengths) != n_samples):
        raise ValueError("group_by_length needs one length per sample")
    size = settings.batch_size
    per_epoch = math.ceil(n_samples / size)
    total = max(1, round(settings.epochs * per_epoch))
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < total:
        order = list(range(n_samples))
        random.Random(f"{settings.seed}-epoch-{epoch}").shuffle(order)
        if settings.group_by_length:
            mega = size * MEGABATCH_BATCHES
            order = [
                i
                for start in range(0, n_samples, mega)
                for i in sorted(order[start : start + mega], key=lambda i: -lengths[i])
            ]
        batches = [order[i : i + size] for i in range(0, n_samples, size)]
        if settings.group_by_length:
            longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        plan += batches
        epoch += 1
    return plan[:total]


def micro_batches(indices: list[int], grad_accum: int) -> list[list[int]]:
    """A process's share of one step cut into at most ``grad_accum`` contiguous, near-equal micro-batches."""
    n = min(grad_accum, len(indices))
    bounds = [round(k * len(indices) / n) for k in range(n + 1)]
    return [indices[a:b] for a, b in itertools.pairwise(bounds)]


def _micro_batches(step_samples: list[int], settings: LoopSettings, backend: _Backend) -> tuple[int, list[list[int]]]:
    """How many of this process's micro-batches of one step carry weight, and the micro-batches it runs: its
    own, then under sharding weight-0 repeats of the step's first sample up to the most any process has."""
    share = my_share(step_samples)
    # a process left without samples runs the first one at weight 0: it must still join the sync
    own = micro_batches(share or step_samples[:1], settings.grad_accum)
    return len(own) if share else 0, own + [step_samples[:1]] * (backend.micro_batch_count(len(own)) - len(own))


def warmup_cosine(step: int, total: int, warmup_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_ratio`` of the steps, then cosine to 0."""
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(groups: Sequence[ParamGroup], settings: LoopSettings) -> torch.optim.AdamW:
    nonempty = [g for g in groups if g.params]
    if not nonempty:
        raise ValueError("nothing to train: every parameter group is empty")
    return torch.optim.AdamW(
        [{"params": g.params, "lr": g.lr or settings.lr, "name": g.name} for g in nonempty],
        weight_decay=settings.weight_decay,
        betas=settings.betas,
    )


def autocast(precision: str, device: torch.device):
    """bf16 autocast for "bf16", and for "auto" on CUDA; a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=trains_in_bf16(precision, device.type))


def _prepare(model: torch.nn.Module, groups: Sequence[ParamGroup], optimizer: torch.optim.Optimizer):
    """The accelerator, and the model and optimizer it prepared (wrapped for data parallelism when launched)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Recipes switch parameter groups on and off between steps (RoE's stages); DDP only syncs parameters
    # that required grad when it wrapped the model, and must tolerate the ones a step leaves unused.
    flags = [(p, p.requires_grad) for g in groups for p in g.params]
    for p, _ in flags:
        p.requires_grad_(True)
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    prepared_model, prepared_optimizer = accelerator.prepare(model, optimizer)
    for p, flag in flags:
        p.requires_grad_(flag)
    return accelerator, prepared_model, prepared_optimizer


def _scale_gradients(accelerator, params: list[torch.nn.Parameter], count: float) -> float:
    """Turn the accumulated gradients of token (or sample) sums into the gradient of the global batch's mean.

    Each micro-batch's backward ran on its mean loss times ``count`` units (samples, or supervised tokens);
    data parallelism then averaged over processes. Multiplying by processes / all units gives the mean over
    every unit of the step, exactly as one process with the whole batch would. Returns the global count.
    """
    total = float(accelerator.reduce(torch.tensor(float(count), device=accelerator.device), reduction="sum"))
    factor = accelerator.num_processes / total if total else 0.0
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)
    return total


class _Backend:
    """How the loop's model is spread over processes: whole on each (through ``Accelerator.prepare``: one process,
    DDP, ZeRO-1/2, FSDP NO_SHARD) or sharded (FSDP2, `sharding.py`)."""

    def __init__(
        self, model: torch.nn.Module, groups: Sequence[ParamGroup], settings: LoopSettings, state: LoadedState | None
    ):
        from accelerate import Accelerator

        rank, world = rank_and_world()
        self.shards = None
        if state is not None:  # before any copy or wrapping: restored tensors go to the whole model
            state.restore_params({f"{g.name}.{i}": p for g in groups for i, p in enumerate(g.params)})
            state.restore_rng(rank, world)
        if parameter_sharding() == FSDP2 and world > 1:
            self.accelerator = Accelerator()
            self.shards = ShardedCopy(model, groups, world)
            self.groups = [ParamGroup(g.name, self.shards.params(i), g.lr) for i, g in enumerate(groups)]
            self.optimizer = build_optimizer(self.groups, settings)
            self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]  # before a restore overwrites them
            self.model = self.shards.model
            if state is not None:
                self.shards.load_optimizer_state(self.optimizer, state.optimizer_state(sharded=True))
        else:
            self.groups = list(groups)
            optimizer = build_optimizer(groups, settings)
            self.base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a restore overwrites them
            if state is not None:
                optimizer.load_state_dict(state.optimizer_state(sharded=False))
            self.accelerator, self.model, self.optimizer = _prepare(model, groups, optimizer)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def micro_batch_count(self, count: int) -> int:
        """How many micro-batches this process runs: its own, or under sharding the most any process has
        (every forward and backward gathers and scatters shards, so all processes must run as many)."""
        return max(all_gather_objects(count)) if self.shards else count

    def sync(self, last: bool):
        """Gradients are synchronised once per step, in the backward of its last micro-batch."""
        if self.shards:
            self.shards.set_gradient_sync(last)
            return nullcontext()
        return nullcontext() if last else self.accelerator.no_sync(self.model)

    def idle_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """A zero loss for a micro-batch with nothing to learn, whose backward still joins the synchronisation.
        Sharded, it must run through the forward's graph (each unit scatters its gradients from there)."""
        if self.shards:
            return torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)) * 0.0
        return sum(p.sum() for p in self.params) * 0.0

    def clip(self, max_norm: float) -> None:
        if self.shards:
            torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        else:
            self.accelerator.clip_grad_norm_(self.params, max_norm)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The trained tensors (whole, keyed like the groups) and the optimizer's state (collective when sharded)."""
        if self.shards:
            whole = self.shards.whole()
            params = {
                f"{g.name}.{i}": whole[name]
                for g, names in zip(self.groups, self.shards.names)
                for i, name in enumerate(names)
            }
            return params, self.shards.optimizer_state(self.optimizer)
        return {f"{g.name}.{i}": p for g in self.groups for i, p in enumerate(g.params)}, self.optimizer.state_dict()

    def finish(self) -> None:
        if self.shards:
            self.shards.finish()


def train(
    model: torch.nn.Module,
    groups: Sequence[ParamGroup],
    loss_fn: Callable[[torch.nn.Module, list[int], ExitStack], dict[str, torch.Tensor]],
    n_samples: int,
    settings: LoopSettings,
    *,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    loggers: Sequence[Callable[[dict], None]] = (),
    progress: Progress = silent,
    description: str = "training",
    lengths: Sequence[int] | None = None,
    inputs: InputPipeline | None = None,
    gradient_hook: GradientHook | None = None,
) -> LoopResult:
    """Run the loop; ``loss_fn(model, indices, scope)`` must call the model it is given (the prepared one)
    and return a dict with at least ``loss`` (other scalars are logged). Contexts entered on ``scope``
    stay open through the backward pass, which recomputes activations under gradient checkpointing.
    A loss that is a mean over tokens returns their number as ``count`` (default: a mean over the
    samples), so that data-parallel and accumulated steps weight every token as one large batch would.
    ``lengths`` (one per sample) is needed with ``settings.group_by_length``. Under FSDP2 the model the loss
    function is given is a sharded copy; ``model`` gets the trained tensors when the loop ends. With ``inputs``
    every micro-batch's model inputs are built ahead (stages/training/inputs.py) and the loss function gets them
    as a fourth argument, ``loss_fn(model, indices, scope, batch)``. ``gradient_hook`` sees every step's gradients
    (EWC's Fisher, accumulated during training)."""
    plan = batch_plan(n_samples, settings, lengths)
    result = LoopResult(steps=len(plan))
    torch.manual_seed(settings.seed)
    state = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    backend = _Backend(model, groups, settings, state)  # restores the RNG too, so dropout continues exactly
    if state is not None:
        result.log, result.resumed_from = state.log, state.step
        result.warnings += filter(
            None,
            [thread_mismatch(f"the checkpoint resumed at step {state.step}", torch.get_num_threads(), state.threads)],
        )
        if gradient_hook is not None:
            state.restore_tensors(gradient_hook.state)
    start = result.resumed_from
    optimizer, accelerator, base_lrs = backend.optimizer, backend.accelerator, backend.base_lrs
    schedule = {step: _micro_batches(plan[step], settings, backend) for step in range(start, len(plan))}
    feed = inputs.batches([m for _, micros in schedule.values() for m in micros]) if inputs is not None else None
    try:
        with progress(description, total=len(plan)) as bar:
            bar.advance(start)
            for step in range(start, len(plan)):
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * warmup_cosine(step, len(plan), settings.warmup_ratio)
                for callback in callbacks:
                    callback.on_step_begin(step, len(plan), optimizer)
                weighted, micros = schedule[step]
                optimizer.zero_grad(set_to_none=True)
                count, sums = 0.0, {}
                for k, indices in enumerate(micros):
                    with backend.sync(k == len(micros) - 1), ExitStack() as scope:
                        with autocast(settings.precision, accelerator.device):
                            outputs = (
                                loss_fn(backend.model, indices, scope)
                                if feed is None
                                else loss_fn(backend.model, indices, scope, next(feed))
                            )
                        units = float(outputs.pop("count", len(indices))) if k < weighted else 0.0
                        # nothing to learn here (no share, a padding micro-batch, or every answer truncated away:
                        # the mean is NaN), but the backward must run for the data-parallel sync
                        loss = outputs["loss"] * units if units else backend.idle_loss(outputs["loss"])
                        accelerator.backward(loss)
                    count += units
                    for key, value in outputs.items():
                        sums[key] = sums.get(key, 0.0) + (value.detach() * units if units else 0.0)
                total = _scale_gradients(accelerator, backend.params, count)
                if gradient_hook is not None:
                    gradient_hook()
                if settings.clip:
                    backend.clip(settings.clip)
                optimizer.step()
                row = {
                    "step": step + 1,
                    **{
                        k: float(accelerator.reduce(v, reduction="sum")) / total if total else 0.0
                        for k, v in sums.items()
                    },
                    "supervised": total,  # tokens (or samples) the step's loss averaged over, on every process
                    **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups},
                }
                _check_step(row["loss"], backend.params, accelerator, step + 1, len(plan))
                for callback in callbacks:
                    row.update(callback.log_fields())
                result.log.append(row)
                for log in loggers:
                    log(row)
                bar.advance(1, loss=row["loss"])
                done = step + 1
                if (
                    checkpoint_dir is not None
                    and settings.checkpoint_every
                    and done % settings.checkpoint_every == 0
                    and done < len(plan)
                ):
                    rng = all_gather_objects(rng_state())  # every process's, so each resumes its own dropout draws
                    params, optimizer_state = backend.checkpoint_state()
                    if is_main():
                        save_checkpoint(
                            checkpoint_dir,
                            done,
                            params,
                            optimizer_state,
                            result.log,
                            rng,
                            sharded=backend.shards is not None,
                            threads=torch.get_num_threads(),
                            hook_state=gradient_hook.state if gradient_hook is not None else None,
                        )
        _check_supervised(result.log, result.warnings)
    except TrainingFailed:
        if checkpoint_dir is not None and is_main():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # its checkpoints would only resume into the failure
        raise
    backend.finish()
    result.sharding = FSDP2 if backend.shards is not None else None
    return result
