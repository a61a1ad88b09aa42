"""The skip-ratio sweep (`dmole route-sweep`): RoE trained at several targets ρ, each against the two baselines at
RoE's realised skip (static layer dropping, random routing; stages/roe/fixed.py), per seed. Every run is scored
per task relative to the same model without skipping (the dense twin when stage 2 tunes the backbone, else the
base), and timed at batch 1 against its own dense forward.

One run = one row of ``runs``: seed, target, variant, realised skip, per-task scores and relative scores, the
mean relative score, and the batch-1 speed-up. `summarise` folds the seeds: mean and spread (max − min).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..options import RouteSweepOptions, RouteTrainOptions
from ..progress import Progress, silent
from .fixed import FixedRouting, least_change_layers


@dataclass(frozen=True)
class SweepInputs:
    """What every run of a sweep shares: the training samples, the test sets and the route-train options."""

    samples: list
    sets: list
    settings: RouteTrainOptions
    sweep: RouteSweepOptions


def relative(scores: dict[str, float], dense: dict[str, float]) -> dict[str, float | None]:
    """Each task's score over the dense score (None where the dense score is 0)."""
    return {task: scores[task] / dense[task] if dense[task] else None for task in scores}


def mean_relative(rel: dict[str, float | None]) -> float | None:
    """The mean over the tasks that have a relative score (None when none has)."""
    return _mean([v for v in rel.values() if v is not None])


def skip_patterns(rows: Sequence[dict]) -> dict[str, int]:
    """Per task, how many different sets of routable layers its test examples skipped (1: static dropping)."""
    sets: dict[tuple[str, str], set[int]] = {}
    for row in rows:
        skipped = sets.setdefault((row["benchmark"], row["example_id"]), set())
        if row["routable"] and row["applied_skip"]:
            skipped.add(row["layer"])
    tasks = dict.fromkeys(task for task, _ in sets)
    return {task: len({frozenset(v) for (t, _), v in sets.items() if t == task}) for task in tasks}


def train_and_score(
    project,
    inputs: SweepInputs,
    target: float,
    seed: int,
    fixed: FixedRouting | None,
    progress: Progress = silent,
    warm: Path | None = None,
) -> tuple[float, dict[str, float], dict | None, dict[str, int]]:
    """Train RoE (or a baseline's adapters, ``fixed``) at ``target`` with ``seed``, from the base or ``warm`` (the
    seed's dense twin); its realised skip on the test sets, its task scores, its batch-1 timing and its number of
    skip patterns per task."""
    import torch

    from .attach import attach, roe_shape
    from .evaluation import evaluate_routed, skip_stats
    from .modules import RoEModules
    from .plan import RoutingPlan
    from .prior import apply_router_prior
    from .recipe import load_for_training, loop_settings, train_roe
    from .speed import batch1_speed, workspace_prompts

    settings = inputs.settings.model_copy(update={"skip_ratio": target})
    adapter, _ = load_for_training(project, settings, warm)
    shape = roe_shape(adapter, settings.always_execute, settings.adapter_rank, settings.router_input)
    torch.manual_seed(seed)
    attachment = attach(adapter, RoEModules(shape))
    if fixed is None:
        apply_router_prior(adapter, attachment.modules, inputs.samples, settings, project.config.seed)
    train_roe(
        adapter,
        attachment.modules,
        inputs.samples,
        settings,
        loop_settings(settings, seed, 0),
        progress=progress,
        fixed=fixed,
    )
    name = fixed.kind if fixed is not None else "roe"
    scores, rows = evaluate_routed(
        adapter,
        attachment,
        inputs.sets,
        settings.eval_batch_size,
        settings.batch_rule,
        run_id=f"sweep-{name}-{target}-{seed}",
        progress=progress,
        fixed=fixed,
    )
    skip, patterns = skip_stats(rows, shape.n_layers)["skip_rate"], skip_patterns(rows)
    if not inputs.sweep.speed_prompts:
        return skip, scores, None, patterns
    routable = shape.routable

    def new_plan(prompt) -> RoutingPlan:
        forced = fixed.forced([prompt.key], routable) if fixed is not None else None
        return RoutingPlan(batch_rule=settings.batch_rule, forced=forced)

    speed = batch1_speed(
        adapter,
        workspace_prompts(project, adapter, None, inputs.sweep.speed_prompts),
        routable,
        new_tokens=inputs.sweep.speed_new_tokens,
        repeats=inputs.sweep.speed_repeats,
        new_plan=new_plan,
    )
    return (
        skip,
        scores,
        {
            "dense_seconds": speed.dense_seconds,
            "routed_seconds": speed.routed_seconds,
            "speedup": speed.speedup,
            "timed_skip_rate": speed.skip_rate,
            "prompts": speed.prompts,
        },
        patterns,
    )


def static_ranking(project, inputs: SweepInputs, seed: int, warm: Path | None = None) -> list[float]:
    """Per LM layer, how little it changes its input on training data (layer_change on the model the runs start
    from: the untouched base, or the dense twin ``warm``), as RoE's redundancy prior measures it."""
    from .prior import measure_change
    from .recipe import load_for_training

    adapter, _ = load_for_training(project, inputs.settings, warm)
    return measure_change(adapter, inputs.samples, inputs.sweep.change_samples, seed, inputs.settings.eval_batch_size)


def sweep_target(
    project,
    inputs: SweepInputs,
    seed: int,
    target: float,
    dense: dict[str, float],
    change: list[float],
    routable: Sequence[int],
    progress: Progress = silent,
    warm: Path | None = None,
) -> list[dict]:
    """RoE at ``target`` and its baselines at RoE's realised skip, for one seed, as rows (see the module's
    docstring); every run starts from the base or from ``warm``, the seed's dense twin."""
    runs = []

    def record(variant: str, skip: float, scores: dict, speed: dict | None, patterns: dict, **extra) -> None:
        rel = relative(scores, dense)
        runs.append(
            {
                "seed": seed,
                "target": target,
                "variant": variant,
                "skip_rate": skip,
                "scores": scores,
                "relative": rel,
                "mean_relative": mean_relative(rel),
                "speed": speed,
                "skip_patterns": patterns,
                **extra,
            }
        )

    skip, scores, speed, patterns = train_and_score(project, inputs, target, seed, None, progress, warm)
    record("roe", skip, scores, speed, patterns)
    baselines = []
    if "static" in inputs.sweep.baselines:
        k = round(skip * len(routable))
        baselines.append(FixedRouting("static", layers=least_change_layers(change, routable, k), seed=seed))
    if "random" in inputs.sweep.baselines:
        baselines.append(FixedRouting("random", rate=skip, seed=seed))
    for fixed in baselines:
        run = train_and_score(project, inputs, target, seed, fixed, progress, warm)
        record(fixed.kind, *run, routing=fixed.to_json())
    return runs


def summarise(runs: Sequence[dict]) -> list[dict]:
    """Per (target, variant), over the seeds: mean realised skip, mean relative score (mean, min, max, spread),
    mean relative score per task, and mean speed-up."""
    out = []
    keys = list(dict.fromkeys((r["target"], r["variant"]) for r in runs))
    for target, variant in keys:
        group = [r for r in runs if r["target"] == target and r["variant"] == variant]
        means = [r["mean_relative"] for r in group if r["mean_relative"] is not None]
        tasks = list(group[0]["relative"])
        per_task = {t: _mean([r["relative"][t] for r in group if r["relative"][t] is not None]) for t in tasks}
        speeds = [r["speed"]["speedup"] for r in group if r["speed"] is not None]
        out.append(
            {
                "target": target,
                "variant": variant,
                "seeds": [r["seed"] for r in group],
                "skip_rate": _mean([r["skip_rate"] for r in group]),
                "mean_relative": _mean(means),
                "min_relative": min(means, default=None),
                "max_relative": max(means, default=None),
                "spread": max(means) - min(means) if len(means) > 1 else None,  # one seed has no spread
                "relative": per_task,
                "speedup": _mean(speeds) if speeds else None,
            }
        )
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
