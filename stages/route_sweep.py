"""Stage `roe-sweep` (`dmole route-sweep`): RoE at several skip targets against static layer dropping and random
routing at the same realised skip, per seed (stages/roe/sweep.py), on the workspace's base model with route-train's
options.

Writes sweep.json (options, the dense reference per seed, the layer ranking behind static dropping, every run, and
the per-(target, variant) summary over seeds), sweep.parquet (one row per run and task) and sweep.md with the
accuracy–speed plot sweep.png, under roe-sweep/all/v<N>. Each finished (seed, target) and each seed's dense scores
are kept under .runs/roe-sweep/, keyed by everything but the targets and seeds (the twin: by what it depends on): a
killed sweep resumes, and a sweep over more targets or seeds, or with other RoE knobs, trains only what is new.
"""

from __future__ import annotations

from dmole.artifacts import Writer
from dmole.artifacts.io import read_json, write_json, write_parquet

from .data.tasks import task_files
from .distributed import is_main
from .errors import UserError
from .figures.roe_sweep import TASK
from .options import RouteSweepOptions, RouteTrainOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import ROE_SWEEP, ROUTE_TRAIN
from .resolve import stage_options
from .runner import (
    StageResult,
    checkpoint_dir,
    fingerprint,
    model_fingerprint,
    run_stage,
)


def sweep_settings(project: Project, overrides: dict | None = None) -> RouteTrainOptions:
    """route-train's options as the sweep trains with them: the workspace's (and ``overrides``), from the base, with
    stage 2 tuning the whole backbone unless the workspace chose a mode."""
    settings = stage_options(project.config, ROUTE_TRAIN.name, overrides)
    if settings.start != "base":
        raise UserError("route-sweep trains on the base model; set route-train's `start` back to base")
    return settings.model_copy(update={"stage2_mode": settings.stage2_mode or "full"})


def _table_rows(runs: list[dict]) -> dict[str, list]:
    rows = [
        {
            "seed": r["seed"],
            "target": r["target"],
            "variant": r["variant"],
            "skip_rate": r["skip_rate"],
            "task": task,
            "score": score,
            "relative": r["relative"][task],
            "speedup": r["speed"]["speedup"] if r["speed"] else None,
        }
        for r in runs
        for task, score in r["scores"].items()
    ]
    return {key: [row[key] for row in rows] for key in rows[0]}


def route_sweep(
    project: Project,
    options: RouteSweepOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    from .roe.evaluation import eval_sets
    from .roe.recipe import TWIN_OPTIONS
    from .route_train import training_subset

    sweep = stage_options(project.config, ROE_SWEEP.name, options)
    settings = sweep_settings(project)
    samples = [s for _, s in training_subset(project, project.config.tasks, settings, project.config.seed)]
    sets = eval_sets(project, settings.max_eval_samples)
    config = {
        "options": hashed(sweep),
        "route_train": hashed(settings),
        "tasks": [hashed(t) for t in project.config.tasks],
        "n_train_samples": len(samples),
        "sources": {
            "data": {t.name: fingerprint(task_files(project.data_root, t)) for t in project.config.tasks},
            "model": model_fingerprint(project),
        },
    }

    # Finished runs are kept per (seed, target) under a key of everything else that decides them, so a killed
    # sweep resumes and a sweep over more targets or seeds reuses the runs it shares with an earlier one; each
    # seed's dense twin under a key of what it depends on, so RoE's own knobs do not train it again.
    cache = checkpoint_dir(
        project,
        ROE_SWEEP.name,
        TASK,
        {k: v for k, v in config.items() if k != "options"}
        | {"options": {k: v for k, v in config["options"].items() if k not in ("skip_ratios", "seeds")}},
    )
    twins = checkpoint_dir(
        project,
        ROE_SWEEP.name,
        "twin",
        {k: v for k, v in config.items() if k not in ("options", "route_train")}
        | {"route_train": {k: config["route_train"][k] for k in TWIN_OPTIONS}},
    )

    def compute(writer: Writer) -> None:
        from .figures import roe_sweep as figure
        from .roe.attach import roe_shape
        from .roe.backbone import tuned
        from .roe.evaluation import evaluate_dense
        from .roe.recipe import dense_twin_scores, loop_settings, warm_start
        from .roe.sweep import SweepInputs, static_ranking, summarise, sweep_target

        inputs = SweepInputs(samples, sets, settings, sweep)
        cache.mkdir(parents=True, exist_ok=True)
        base = project.load_model()
        routable = list(roe_shape(base, settings.always_execute).routable)
        dense: dict[int, dict[str, float]] = {}
        change: dict[int, list[float]] = {}
        runs = []
        for seed in sweep.seeds:
            loop = loop_settings(settings, seed, 0)
            twin = twins / f"seed-{seed}"
            warm = (
                warm_start(project, samples, sets, settings, loop, progress=progress, checkpoint_dir=twin)
                if settings.warm_start
                else None
            )
            change[seed] = static_ranking(project, inputs, project.config.seed, warm)
            if tuned(settings.stage2_mode):
                dense[seed] = dense_twin_scores(
                    project, samples, sets, settings, loop, progress=progress, checkpoint_dir=twin, warm=warm
                )
            else:
                dense[seed] = evaluate_dense(base, sets, settings.eval_batch_size, progress, label="base")
            for target in sweep.skip_ratios:
                done = cache / f"seed-{seed}" / f"target-{target}.json"
                if done.is_file():
                    rows = read_json(done)
                else:
                    rows = sweep_target(
                        project, inputs, seed, target, dense[seed], change[seed], routable, progress, warm
                    )
                    if is_main():
                        done.parent.mkdir(parents=True, exist_ok=True)
                        write_json(done, rows)
                runs += rows
        result = {
            "options": sweep.model_dump(),
            "route_train": settings.model_dump(),
            "routable": routable,
            "layer_change": {str(seed): values for seed, values in change.items()},
            "dense_reference": ("dense twin" + (", warm start" if settings.warm_start else ""))
            if tuned(settings.stage2_mode)
            else "base",
            "dense": {str(s): scores for s, scores in dense.items()},
            "runs": runs,
            "summary": summarise(runs),
        }
        write_json(writer.path(ROE_SWEEP.files.result), result)
        write_parquet(writer.path(ROE_SWEEP.files.table), _table_rows(runs))
        data = figure.from_result(result, ROE_SWEEP.name)
        figure.plot(data, writer.path(figure.NAME))
        writer.path(ROE_SWEEP.files.note).write_text("\n".join(figure.table(data)) + "\n", encoding="utf-8")
        writer.meta.update(
            sweep=[
                {k: row[k] for k in ("target", "variant", "skip_rate", "mean_relative", "spread", "speedup")}
                for row in result["summary"]
            ]
        )

    return run_stage(project, ROE_SWEEP.name, TASK, config=config, inputs=[], compute=compute, force=force)
