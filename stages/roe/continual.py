"""RoE on a continual model (spec roe.md §8): the workspace method's model after a task, with its experts routed
per sample exactly as `eval` routes them. The routers' features come from the cached embeddings (experts off,
RoE off), so the expert choice never depends on RoE; the prefill then runs with those experts active while RoE
routes layer by layer. Backbone and experts stay frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UserError
from ..methods import get_method
from ..methods.base import EvalPlan
from ..registry import EVAL
from ..resolve import stage_options

BASE = "base"


class CompositionError(UserError):
    """A continual model RoE cannot be trained on."""


def start_task(project, start: str) -> str | None:
    """None for the base model, else the task after which the continual model is taken (validated)."""
    if start == BASE:
        return None
    if start not in project.config.task_names:
        raise CompositionError(
            f"route-train --from {start!r}: not 'base' nor a task of this workspace "
            f"({', '.join(project.config.task_names)})"
        )
    method = get_method(project.config.method)
    if not method.routes:
        raise CompositionError(
            f"route-train --from composes RoE with a routed continual model (dmole and its "
            f"ablations); this workspace's method is {method.name}"
        )
    return start


def trained_on(project, after: str | None) -> str:
    """How reports name the model RoE was trained on: the base, or the method's model after a task."""
    return BASE if after is None else f"{project.config.method} after {after}"


def continual_inputs(project, after: str) -> list:
    """The artifacts the continual model after ``after`` is built from."""
    return get_method(project.config.method).eval_inputs(project, after)


@dataclass
class ContinualModel:
    """The method's model after a task: ``batches(task, samples, split)`` is the context each batch of those
    samples runs in (its samples' experts); ``rows`` narrows it to a layer's executing rows (RoE's gather)."""

    plan: EvalPlan
    options: object  # EvalOptions: the routing rule, as `eval` applies it

    def routes(self, task: str, samples: Sequence, split: str) -> list:
        return self.plan.routes_for(task, list(samples), self.options, split)[0]

    def batches(self, routes: list) -> Callable:
        return self.plan.around(routes)

    @property
    def rows(self) -> Callable:
        return self.plan.rows


def load_continual(project, adapter, after: str) -> ContinualModel:
    method = get_method(project.config.method)
    options = stage_options(project.config, EVAL.name).model_copy(update={"method": method.name})
    return ContinualModel(method.evaluation(project, after, adapter), options)
