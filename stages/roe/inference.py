"""Skip-aware generation: every generate call runs under a fresh RoutingPlan, decided at prefill.

``generate_with_roe`` is the library call; ``RequestRecorder`` is the ``around_batch`` hook that the
evaluation harness (stages/evaluation/predict.py) holds around each batch, keeping every batch's plan.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..evaluation.predict import greedy_generate
from .attach import Attachment
from .fixed import FixedRouting
from .plan import BatchRule, RoutingPlan, routing


@dataclass
class RoEGeneration:
    texts: list[str]
    plan: RoutingPlan
    output_ids: torch.Tensor


def _warn_fallback(plan: RoutingPlan) -> None:
    if plan.batch_rule_applied != plan.batch_rule:
        warnings.warn(
            f"RoE fell back to the OR batch rule ({plan.fallback_reason}): a layer runs for the whole "
            "batch when any row wants it",
            stacklevel=3,
        )


@torch.no_grad()
def generate_with_roe(
    adapter,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    batch_rule: BatchRule = "gather",
    forced: dict[int, torch.Tensor] | None = None,
) -> RoEGeneration:
    """Greedy generation with routed layers (RoE must be attached to ``adapter.model``)."""
    inputs = adapter.generation_batch(list(images), list(prompts))
    with routing(RoutingPlan(batch_rule=batch_rule, forced=forced)) as plan:
        output = greedy_generate(
            adapter, adapter.model, inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens
        )
    _warn_fallback(plan)
    return RoEGeneration(adapter.decode_new_tokens(output, inputs["input_ids"].shape[1]), plan, output)


@dataclass
class RequestRecorder:
    """``around_batch`` for predict(): a new plan per batch, kept with the batch's sample indices. With ``fixed`` (a
    baseline) the plan is forced to its decisions for ``routable``, each sample keyed by (``benchmark``, index)."""

    batch_rule: BatchRule = "gather"
    batches: list[tuple[list[int], RoutingPlan]] = field(default_factory=list)
    # a continual model's experts: ``around(indices, inputs)`` routes them, ``rows`` narrows them (RoutingPlan.rows)
    experts: tuple[Callable, Callable] | None = None
    fixed: FixedRouting | None = None
    routable: Sequence[int] = ()
    benchmark: str = ""

    @contextmanager
    def __call__(self, indices: list[int], inputs: dict) -> Iterator[RoutingPlan]:
        """The plan reads its segments from the prefill itself (the pre-hook attach() installs)."""
        around, rows = self.experts if self.experts is not None else (None, None)
        forced = (
            None if self.fixed is None else self.fixed.forced([(self.benchmark, i) for i in indices], self.routable)
        )
        with (
            around(indices, inputs) if around is not None else nullcontext(),
            routing(RoutingPlan(batch_rule=self.batch_rule, rows=rows, forced=forced)) as plan,
        ):
            yield plan
        _warn_fallback(plan)
        self.batches.append((indices, plan))


def decision_rows(
    recorder: RequestRecorder, attachment: Attachment, *, run_id: str, benchmark: str, example_ids: Sequence[str]
) -> list[dict]:
    """One row per (example, LM layer), always-executed layers included (spec roe.md §6.1)."""
    shape = attachment.modules.shape
    rows = []
    for indices, plan in recorder.batches:
        segments = plan.segments
        prompt = (segments.turn >= 0).sum(1).tolist()
        prefix, question = segments.counts()
        for row, index in enumerate(indices):
            for layer in range(shape.n_layers):
                routed = layer in plan.applied
                logits = plan.logits[layer][row].tolist() if routed else [None, None]
                rows.append(
                    {
                        "run_id": run_id,
                        "benchmark": benchmark,
                        "example_id": example_ids[index],
                        "turn": 1,
                        "layer": layer,
                        "routable": layer in shape.routable,
                        "logit_exec": logits[0],
                        "logit_skip": logits[1],
                        "decided_skip": routed and bool(plan.decided[layer][row]),
                        "applied_skip": routed and bool(plan.applied[layer][row]),
                        "batch_rule": plan.rule_applied.get(layer, plan.batch_rule),
                        "batch_size": len(indices),
                        "n_prompt_tokens": prompt[row],
                        "n_prefix_tokens": prefix[row],
                        "n_question_tokens": question[row],
                    }
                )
    return rows
