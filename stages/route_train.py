"""Stage `route-train`: RoE's per-layer routers and skip adapters on the workspace model's LM layers, trained
on the training data of every workspace task (spec roe.md §5), then evaluated dense versus routed.

With ``--from TASK`` RoE is trained on the workspace method's continual model after TASK instead of the base
(spec roe.md §8), on a replay of the training data of every task so far, the experts routed per sample.

Writes roe_weights.safetensors, roe_config.json, train_log.parquet, (stage2_mode full / lora) backbone.safetensors
(and backbone_lora/, a PEFT adapter), routing_decisions.parquet and roe_report.json, under route-train/all/v<N>.
"""

from __future__ import annotations

import random
import shutil

from dmole.artifacts import Writer, config_hash
from dmole.artifacts.io import write_json, write_parquet

from .data.tasks import load_train_samples, task_files
from .errors import UserError
from .options import RouteTrainOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import ROUTE_TRAIN
from .resolve import stage_options
from .roe.continual import BASE, continual_inputs, trained_on
from .roe.evaluation import (
    TASK,
    base_hash,
    build_report,
    continual_hash,
    continual_matrix,
    eval_sets,
    evaluate_dense,
    evaluate_routed,
    write_results,
)
from .runner import StageResult, checkpoint_dir, fingerprint, model_fingerprint, run_stage


class RouteTrainError(UserError):
    """An option route-train cannot honour."""


def training_subset(project: Project, tasks: list, options: RouteTrainOptions, seed: int) -> list[tuple[str, object]]:
    """(task name, sample) pairs: every sample of ``tasks``, or a seeded share of them."""
    pairs = [(task.name, s) for task in tasks for s in load_train_samples(project.data_root, task)]
    keep = max(1, round(options.data_fraction * len(pairs)))
    return random.Random(f"{seed}-route-train").sample(pairs, keep) if keep < len(pairs) else pairs


def _resolved(project: Project, options: RouteTrainOptions) -> tuple[RouteTrainOptions, str | None]:
    """The options with stage2_mode's default filled in, and the task whose continual model RoE starts from."""
    from .roe.continual import start_task

    after = start_task(project, options.start)
    mode = options.stage2_mode or ("full" if after is None else "frozen")
    if after is not None and mode != "frozen":
        raise RouteTrainError(
            f"route-train --from {after} keeps the continual model frozen (spec roe.md §8): "
            f"--stage2-mode must be frozen, not {mode}"
        )
    # a continual model is already tuned on its tasks: warm_start (from the base's dense twin) does not apply
    warm = options.warm_start and after is None
    return options.model_copy(update={"stage2_mode": mode, "warm_start": warm}), after


def route_train(
    project: Project,
    options: RouteTrainOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    options, after = _resolved(project, stage_options(project.config, ROUTE_TRAIN.name, options))
    seed = project.config.seed
    names = project.config.task_names
    tasks = project.config.tasks if after is None else project.config.tasks[: names.index(after) + 1]
    pairs = training_subset(project, tasks, options, seed)
    samples = [sample for _, sample in pairs]
    sets = eval_sets(project, options.max_eval_samples)
    model_prints = model_fingerprint(project)
    inputs = [] if after is None else continual_inputs(project, after)
    config = {
        "options": hashed(options),
        "tasks": [hashed(t) for t in project.config.tasks],
        "n_train_samples": len(samples),
        "seed": seed,
        "sources": {
            "data": {t.name: fingerprint(task_files(project.data_root, t)) for t in project.config.tasks},
            "model": model_prints,
        },
    }

    def compute(writer: Writer) -> None:
        import torch

        from .roe.attach import attach, roe_shape
        from .roe.backbone import save_stage2, tuned
        from .roe.continual import load_continual
        from .roe.modules import RoEModules
        from .roe.prior import apply_router_prior
        from .roe.recipe import dense_twin_scores, load_for_training, loop_settings, train_roe, warm_start
        from .roe.weights import save_roe
        from .training.memory import peak_memory, reset_peak_memory

        rss_reset = reset_peak_memory()
        loop = loop_settings(options, seed)
        # resume checkpoints: the dense twin's and RoE's runs, and the twin's scores once it is done
        ckpt = checkpoint_dir(project, ROUTE_TRAIN.name, TASK, config)
        warm = (
            warm_start(project, samples, sets, options, loop, progress=progress, checkpoint_dir=ckpt)
            if options.warm_start
            else None
        )
        adapter, lora = load_for_training(project, options, warm)
        continual = load_continual(project, adapter, after) if after is not None else None
        around = None
        if continual is not None:  # each training sample gets its experts by the inference rule
            routes = [None] * len(pairs)
            for task in tasks:
                rows = [i for i, (name, _) in enumerate(pairs) if name == task.name]
                for i, route in zip(rows, continual.routes(task.name, [pairs[i][1] for i in rows], "train")):
                    routes[i] = route
            around = continual.batches(routes)
        reference = "dense twin (warm start)" if warm is not None else trained_on(project, after)
        scores = {
            "base": evaluate_dense(
                adapter, sets, options.eval_batch_size, progress, label=reference, continual=continual
            )
        }
        if tuned(options.stage2_mode):
            scores["dense"] = dense_twin_scores(
                project, samples, sets, options, loop, progress=progress, checkpoint_dir=ckpt, warm=warm
            )
        shape = roe_shape(adapter, options.always_execute, options.adapter_rank, options.router_input)
        torch.manual_seed(seed)
        attachment = attach(adapter, RoEModules(shape))
        priors = apply_router_prior(adapter, attachment.modules, samples, options, project.config.seed, around)
        result = train_roe(
            adapter,
            attachment.modules,
            samples,
            options,
            loop,
            progress=progress,
            checkpoint_dir=ckpt / "roe",
            around=around,
        )

        base_digest = base_hash(model_prints)
        save_roe(
            writer.path(ROUTE_TRAIN.files.weights),
            attachment.modules,
            family=adapter.family,
            base_model=project.model_path.name,
            base_hash=base_digest,
            rho=options.skip_ratio,
            dmole_checkpoint=continual_hash(inputs),
        )
        write_json(
            writer.path(ROUTE_TRAIN.files.config),
            {
                "family": adapter.family,
                **shape.to_json(),
                "variant": shape.router_input,
                "rho": options.skip_ratio,
                "always_execute": [l for l in range(shape.n_layers) if l not in shape.routable],
                "batch_rule": options.batch_rule,
                "stage2_mode": options.stage2_mode,
                "from": after or BASE,
                "base_model": project.model_path.name,
                "base_hash": base_digest,
                "steps": result.steps,
                "router_prior": {str(l): v for l, v in priors.items()} if priors is not None else None,
            },
        )
        write_parquet(
            writer.path(ROUTE_TRAIN.files.log), {k: [row.get(k) for row in result.log] for k in result.log[0]}
        )
        if tuned(options.stage2_mode):
            save_stage2(writer.path, adapter, options.stage2_mode, lora)
            # With no routing plan active every layer executes: spec §6.2's forced-execute run.
            scores["forced"] = evaluate_dense(adapter, sets, options.eval_batch_size, progress, label="forced-execute")
        scores["roe"], rows = evaluate_routed(
            adapter,
            attachment,
            sets,
            options.eval_batch_size,
            options.batch_rule,
            run_id=f"{ROUTE_TRAIN.name}-{config_hash(config)[:12]}",
            progress=progress,
            continual=continual,
        )
        write_results(
            writer,
            rows,
            build_report(
                adapter,
                attachment,
                rows,
                scores,
                rho=options.skip_ratio,
                batch_rule=options.batch_rule,
                reference=reference,
                continual=continual_matrix(project, after),
            ),
        )
        if result.warnings:
            writer.meta["warnings"] = [*writer.meta.get("warnings", []), *result.warnings]
        writer.meta.update(
            steps=result.steps,
            final_loss=result.log[-1]["loss"],
            resumed_from=result.resumed_from,
            sharding=result.sharding,
            **peak_memory(rss_reset),
        )
        shutil.rmtree(ckpt, ignore_errors=True)

    return run_stage(project, ROUTE_TRAIN.name, TASK, config=config, inputs=inputs, compute=compute, force=force)
