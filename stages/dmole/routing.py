"""Which tasks' experts each input uses (spec/dmole.md §8 training routing, §9 inference routing).

All functions take a matrix of router errors ``errors[sample, k]`` for tasks 1..K (column k-1) and the
thresholds ``tau[k-1]``, and return task ids (1-based). Ties always go to the lower task id.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

ROUTING_ORDERS = ("filter-then-rank", "rank-then-filter")


def _ranked(errors_row: np.ndarray, tau: np.ndarray | None = None) -> list[int]:
    """Task ids by increasing error (with ``tau``: error relative to each router's threshold), ties to the lower id
    (stable sort)."""
    key = errors_row if tau is None else errors_row / tau
    return [int(k) + 1 for k in np.argsort(key, kind="stable")]


def candidates(errors_row: np.ndarray, tau: np.ndarray, scale: float = 1.0, *, relative: bool = False) -> list[int]:
    """C(x): tasks whose router accepts x (e_k < tau_k * scale), best first: by lowest error, or (``relative``) by
    lowest error relative to the router's threshold, e_k / tau_k. The routers are separate autoencoders whose errors
    have scales of their own; each tau_k, a quantile of its in-task errors, puts them on one."""
    return [k for k in _ranked(errors_row, tau if relative else None) if errors_row[k - 1] < tau[k - 1] * scale]


def per_sample(
    errors: np.ndarray,
    tau: np.ndarray,
    *,
    scale: float = 1.0,
    top: int = 2,
    order: str = "filter-then-rank",
    second_margin: float | None = None,
    relative: bool = False,
) -> list[tuple[int, ...]]:
    """The default inference rule: the (up to) ``top`` best accepted tasks (``relative``: see `candidates`); none
    means the base model.

    With ``second_margin``, an expert after the first joins only if its error relative to its threshold is
    at most ``second_margin`` times the first's: a stricter bar than mere acceptance, so a router that only
    just accepts an unrelated input does not add its expert to a well-recognised one."""
    if order not in ROUTING_ORDERS:
        raise ValueError(f"routing order must be one of {ROUTING_ORDERS}")
    routed = []
    for row in errors:
        if order == "filter-then-rank":
            chosen = candidates(row, tau, scale, relative=relative)[:top]
        else:
            chosen = [k for k in _ranked(row, tau if relative else None)[:top] if row[k - 1] < tau[k - 1] * scale]
        if second_margin is not None and chosen:
            first = row[chosen[0] - 1] / tau[chosen[0] - 1]
            chosen = chosen[:1] + [k for k in chosen[1:] if row[k - 1] / tau[k - 1] <= second_margin * first]
        routed.append(tuple(chosen))
    return routed


def with_training_partner(
    errors: np.ndarray, tau: np.ndarray, *, scale: float = 1.0, relative: bool = False
) -> list[tuple[int, ...]]:
    """Per sample, its best accepted task i (``relative``: see `candidates`), joined by the one past task that i's
    experts were trained beside for such an input: `training_partner` over routers 1..i-1 at their own thresholds,
    exactly as
    train-task chose it. So a second expert is one the first was trained to work with on this kind of input,
    never a later task's expert, which the first has never seen in its graph."""
    routes = []
    for row in errors:
        accepted = candidates(row, tau, scale, relative=relative)
        if not accepted:
            routes.append(())
            continue
        first = accepted[0]
        partner = training_partner(row[None, : first - 1], tau[: first - 1])[0] if first > 1 else None
        routes.append((first,) if partner is None else (first, partner))
    return routes


def confidence_weights(errors_row: np.ndarray, tau: np.ndarray, route: tuple[int, ...]) -> dict[int, float]:
    """Weights of a sample's routed experts, summing to 1, each inversely proportional to its router's error
    relative to its threshold (one expert: weight 1)."""
    inverse = {k: 1.0 / max(float(errors_row[k - 1] / tau[k - 1]), 1e-12) for k in route}
    total = sum(inverse.values())
    return {k: value / total for k, value in inverse.items()}


def batch_vote(
    errors: np.ndarray, tau: np.ndarray, *, scale: float = 1.0, support: float = 0.3, stage: int | None = None
) -> tuple[int, ...]:
    """The reference rule: one expert set for the whole batch from the per-sample top-1 votes."""
    votes = Counter(best[0] for row in errors if (best := candidates(row, tau, scale)))
    voters = sum(votes.values())
    if voters == 0:
        return ()
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    chosen = [ranked[0][0]]
    stage = errors.shape[1] if stage is None else stage
    if stage > 1 and len(ranked) > 1 and ranked[1][1] / voters >= support:
        chosen.append(ranked[1][0])
    return tuple(chosen)


def evaluation_routes(errors: np.ndarray, tau: np.ndarray, options) -> list:
    """Each sample's experts by eval's rule (``options``: the eval stage's options): per sample (its top, order and
    ranking and second-expert rule; ``partner`` the first task's training partner, ``weighted`` a weight per expert)
    or, with ``batch-vote``, the reference's vote over each batch of ``options.batch_size`` samples in order (the
    batches predict() generates)."""
    from ..evaluation.predict import batch_indices

    if options.routing == "batch-vote":
        routes = []
        for indices in batch_indices(len(errors), options.batch_size):
            chosen = batch_vote(errors[indices], tau, scale=options.threshold_scale, support=options.vote_support)
            routes += [chosen] * len(indices)
        return routes
    relative = options.ranking == "relative"
    if options.second_expert == "partner" and options.top > 1:
        return with_training_partner(errors, tau, scale=options.threshold_scale, relative=relative)
    thresholds = tau * options.threshold_scale
    routes = per_sample(
        errors,
        thresholds,
        top=options.top,
        order=options.routing_order,
        relative=relative,
        second_margin=options.second_margin if options.second_expert == "margin" else None,
    )
    if options.second_expert == "weighted":
        return [confidence_weights(row, thresholds, route) for row, route in zip(errors, routes)]
    return routes


def training_partner(errors_past: np.ndarray, tau_past: np.ndarray) -> list[int | None]:
    """Per sample, the one past task (1..t-1) whose frozen experts join task t's during training."""
    partners = []
    for row in errors_past:
        accepted = candidates(row, tau_past)
        partners.append(accepted[0] if accepted else None)
    return partners


def training_partner_vote(errors_past: np.ndarray, tau_past: np.ndarray, support: float = 0.3) -> int | None:
    """The reference's per-micro-batch variant: the most-voted past task if it has enough support."""
    votes = Counter(p for p in training_partner(errors_past, tau_past) if p is not None)
    voters = sum(votes.values())
    if voters == 0:
        return None
    task, count = min(votes.items(), key=lambda item: (-item[1], item[0]))
    return task if count / voters >= support else None


def grouped_partner_votes(errors_past: np.ndarray, tau_past: np.ndarray, size: int | None) -> list[int | None]:
    """Per sample of a micro-batch, the past task its vote group chose: the batch cut into consecutive groups of
    ``size`` (None: one group), each voting as the reference's per-device batch does."""
    size = size or len(errors_past)
    partners: list[int | None] = []
    for start in range(0, len(errors_past), size):
        group = errors_past[start : start + size]
        partners += [training_partner_vote(group, tau_past)] * len(group)
    return partners


def acceptance_warning(task: str, accepted: int, total: int, minimum: float, *, where: str) -> str | None:
    """One line when a task's own router accepts fewer than ``minimum`` of its test samples, which then run
    without their experts (evaluation quietly equals zero-shot); None when routing is healthy."""
    if not total or accepted / total >= minimum:
        return None
    return (
        f"{where}: task {task!r}: its own router accepts {accepted}/{total} ({accepted / total:.0%}) of its "
        f"test samples (< {minimum:.0%}); the rest get no expert. Likely cause: its evaluation prompts differ from "
        "its training questions (the task's `prompt`), or its threshold is too tight (fit-router --quantile, "
        "eval threshold_scale)"
    )
