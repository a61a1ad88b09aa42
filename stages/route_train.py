"""Stage `route-train`: RoE's per-layer routers and skip adapters on the workspace model's LM layers, trained
on the training data of every workspace task (spec roe.md §5), then evaluated dense versus routed.

Writes roe_weights.safetensors, roe_config.json, train_log.parquet, (stage2_mode full) backbone.safetensors,
routing_decisions.parquet and roe_report.json, under route-train/all/v<N>.
"""

from __future__ import annotations

import random
import shutil

from artifacts import Writer, config_hash
from artifacts.io import read_json, write_json, write_parquet

from .data.tasks import load_train_samples, task_files
from .distributed import is_main
from .errors import UserError
from .options import RouteTrainOptions, stage_options
from .progress import Progress, silent
from .project import Project
from .roe_eval import (BACKBONE, CONFIG, TASK, TRAIN_STAGE, WEIGHTS, base_hash, build_report, eval_sets,
                       evaluate_dense, evaluate_routed, write_results)
from .runner import StageResult, checkpoint_dir, fingerprint, model_fingerprint, run_stage

STAGE = TRAIN_STAGE
LOG = "train_log.parquet"


class RouteTrainError(UserError):
    """An option route-train cannot honour."""


def _training_subset(project: Project, options: RouteTrainOptions, seed: int) -> list:
    samples = [s for task in project.config.tasks for s in load_train_samples(project.data_root, task)]
    keep = max(1, round(options.data_fraction * len(samples)))
    return random.Random(f"{seed}-route-train").sample(samples, keep) if keep < len(samples) else samples


def _dense_twin_scores(load, samples, sets, options: RouteTrainOptions, loop, ckpt, progress) -> dict[str, float]:
    """The same fine-tuning with every layer executed (nothing to skip), scored; kept beside the checkpoints
    once done, so a resumed run does not train the twin again."""
    from .roe.recipe import train_roe

    done = ckpt / "dense_scores.json"
    if done.is_file():
        return read_json(done)
    twin = load()
    train_roe(twin, None, samples, options, loop, progress=progress, checkpoint_dir=ckpt / "twin")
    scores = evaluate_dense(twin, sets, options.eval_batch_size, progress, label="dense twin")
    if is_main():
        done.parent.mkdir(parents=True, exist_ok=True)
        write_json(done, scores)
    return scores


def route_train(project: Project, options: RouteTrainOptions | dict | None = None, *, force: bool = False,
                progress: Progress = silent) -> StageResult:
    options = stage_options(project.config, STAGE, options)
    if options.start != "base":
        raise RouteTrainError(f"route-train --from {options.start!r} is not supported yet: only 'base' (starting "
                              "from a D-MoLE checkpoint is a later capability, spec roe.md §8)")
    seed = project.config.seed
    samples = _training_subset(project, options, seed)
    sets = eval_sets(project, options.max_eval_samples)
    model_prints = model_fingerprint(project)
    config = {"options": options.model_dump(), "tasks": [t.model_dump() for t in project.config.tasks],
              "n_train_samples": len(samples), "seed": seed,
              "sources": {"data": {t.name: fingerprint(task_files(project.data_root, t)) for t in project.config.tasks},
                          "model": model_prints}}

    def compute(writer: Writer) -> None:
        import torch
        from safetensors.torch import save_file

        from .roe.attach import attach, roe_shape
        from .roe.modules import RoEModules
        from .roe.recipe import LLM, PROJECTOR, train_roe
        from .roe.weights import VARIANT, save_roe
        from .training.loop import LoopSettings

        def load():
            return project.load_model()

        loop = LoopSettings(epochs=options.epochs, batch_size=options.batch_size, lr=options.roe_lr,
                            weight_decay=0.0, warmup_ratio=options.warmup_ratio, seed=seed,
                            checkpoint_every=options.checkpoint_every, grad_accum=options.grad_accum)
        # resume checkpoints: the dense twin's and RoE's runs, and the twin's scores once it is done
        ckpt = checkpoint_dir(project, STAGE, TASK, config)
        adapter = load()
        scores = {"base": evaluate_dense(adapter, sets, options.eval_batch_size, progress, label="base")}
        tuned = options.stage2_mode == "full"
        if tuned:
            scores["dense"] = _dense_twin_scores(load, samples, sets, options, loop, ckpt, progress)
        shape = roe_shape(adapter, options.always_execute, options.adapter_rank)
        torch.manual_seed(seed)
        attachment = attach(adapter, RoEModules(shape))
        result = train_roe(adapter, attachment.modules, samples, options, loop, progress=progress,
                           checkpoint_dir=ckpt / "roe")

        hashed = base_hash(model_prints)
        save_roe(writer.path(WEIGHTS), attachment.modules, family=adapter.family, base_model=project.model_path.name,
                 base_hash=hashed, rho=options.skip_ratio)
        write_json(writer.path(CONFIG), {
            "family": adapter.family, **shape.to_json(), "variant": VARIANT, "rho": options.skip_ratio,
            "always_execute": [l for l in range(shape.n_layers) if l not in shape.routable],
            "batch_rule": options.batch_rule, "stage2_mode": options.stage2_mode,
            "base_model": project.model_path.name, "base_hash": hashed, "steps": result.steps})
        write_parquet(writer.path(LOG), {k: [row.get(k) for row in result.log] for k in result.log[0]})
        if tuned:
            save_file({n: p.detach().contiguous() for n, p in adapter.model.named_parameters()
                       if LLM.fullmatch(n) or PROJECTOR.fullmatch(n)}, str(writer.path(BACKBONE)))
            # With no routing plan active every layer executes: spec §6.2's forced-execute run.
            scores["forced"] = evaluate_dense(adapter, sets, options.eval_batch_size, progress, label="forced-execute")
        scores["roe"], rows = evaluate_routed(adapter, attachment, sets, options.eval_batch_size, options.batch_rule,
                                              run_id=f"{STAGE}-{config_hash(config)[:12]}", progress=progress)
        write_results(writer, rows, build_report(adapter, attachment, rows, scores, rho=options.skip_ratio,
                                                 batch_rule=options.batch_rule))
        writer.meta.update(steps=result.steps, final_loss=result.log[-1]["loss"], resumed_from=result.resumed_from,
                           sharding=result.sharding)
        shutil.rmtree(ckpt, ignore_errors=True)

    return run_stage(project, STAGE, TASK, config=config, inputs=[], compute=compute, force=force)
