"""Batch-1 generation timing (spec roe.md §6.3): greedy ``model.generate`` with a fixed number of new tokens, dense
(no plan) against routed (a plan), on the same attached model, interleaved per prompt after a warm-up; per prompt
the median of the repeats, summed over the prompts. Used by `route-sweep` and the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from .plan import RoutingPlan, routing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def decoder_clock(adapter) -> Iterator[list[float]]:
    """Collects, per forward, the seconds from the first LM layer's start to the last one's end."""
    layers = adapter.language_layers()
    spans: list[float] = []
    begin: list[float] = []

    def start(*_):
        sync(adapter.device)
        begin.append(time.perf_counter())

    def stop(*_):
        sync(adapter.device)
        spans.append(time.perf_counter() - begin.pop())

    hooks = [layers[0].register_forward_pre_hook(start), layers[-1].register_forward_hook(stop)]
    try:
        yield spans
    finally:
        for hook in hooks:
            hook.remove()


def timed_generate(adapter, inputs: dict, new_tokens: int, plan: RoutingPlan | None) -> tuple[float, float]:
    """Total and decoder-stack seconds of one greedy generate call."""
    with decoder_clock(adapter) as spans, routing(plan) if plan else nullcontext():
        sync(adapter.device)
        start = time.perf_counter()
        adapter.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=adapter.tokenizer.pad_token_id,
        )
        sync(adapter.device)
        return time.perf_counter() - start, sum(spans)


@dataclass(frozen=True)
class Prompt:
    """One batch-1 generation input, the context it runs in (a continual model's experts, or none) and the key
    a baseline's decisions are drawn for."""

    inputs: dict
    context: Callable[[], AbstractContextManager] = nullcontext
    key: tuple = ()


@dataclass(frozen=True)
class SpeedResult:
    dense_seconds: float
    routed_seconds: float
    skip_rate: float  # over the prompts' routable layers, as the routed plans applied them
    prompts: int
    new_tokens: int
    repeats: int

    @property
    def speedup(self) -> float:
        return self.dense_seconds / self.routed_seconds


def workspace_prompts(project, adapter, continual, per_task: int) -> list[Prompt]:
    """The first ``per_task`` test prompts of every task, each keyed (task, index) as the evaluation keys it; with a
    continual model, each runs with its own experts."""
    from ..data.images import load_image
    from ..data.prompts import render_prompt
    from ..data.tasks import load_eval_samples

    prompts = []
    for task in project.config.tasks:
        samples = load_eval_samples(project.data_root, task)[:per_task]
        routes = continual.routes(task.name, samples, "test") if continual is not None else [None] * len(samples)
        for index, (sample, route) in enumerate(zip(samples, routes)):
            inputs = adapter.generation_batch([load_image(sample.image)], [render_prompt(task, sample)])
            context = (lambda i=inputs, r=route: continual.batches([r])([0], i)) if continual else nullcontext
            prompts.append(Prompt(inputs, context, (task.name, index)))
    return prompts


@torch.no_grad()
def batch1_speed(
    adapter,
    prompts: Sequence[Prompt],
    routable: Sequence[int],
    *,
    new_tokens: int,
    repeats: int,
    new_plan: Callable[[Prompt], RoutingPlan],
) -> SpeedResult:
    """Dense against routed generate time over ``prompts``; ``new_plan(prompt)`` gives each routed call its plan."""

    def run(prompt: Prompt, routed: bool) -> tuple[float, RoutingPlan | None]:
        plan = new_plan(prompt) if routed else None
        with prompt.context():
            return timed_generate(adapter, prompt.inputs, new_tokens, plan)[0], plan

    run(prompts[0], False), run(prompts[0], True)  # warm-up
    dense = routed = 0.0
    skipped: list[bool] = []
    for prompt in prompts:
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeats):
            for mode in (False, True):
                seconds, plan = run(prompt, mode)
                times[mode].append(seconds)
        skipped += [bool(plan.applied[layer][0]) for layer in routable]
        dense += statistics.median(times[False])
        routed += statistics.median(times[True])
    return SpeedResult(dense, routed, sum(skipped) / max(len(skipped), 1), len(prompts), new_tokens, repeats)
