"""Stage `train-task`: train task t's adapter for the chosen method (`stages/methods/`) and save it.

The method decides what is trained, what it carries from earlier tasks and what extra loss terms it adds; this
stage resolves the options, records the inputs, and runs the one training loop (`training/loop.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dmole.artifacts import Writer
from dmole.artifacts.io import write_parquet

from .config import TaskSpec, parse_model
from .data.samples import TrainSample
from .data.tasks import load_train_samples
from .distributed import launched, parameter_sharding
from .errors import UserError
from .methods import get_method
from .methods.base import ContinualMethod, TrainRun, parity_allocations
from .options import TrainTaskOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import TRAIN_TASK
from .resolve import stage_options
from .runner import StageResult, checkpoint_dir, run_stage, source_fingerprint
from .training.steps import loop_settings, step_loss
from .training.trackers import check_available, open_loggers


def method_hyper(project: Project, method, options: TrainTaskOptions):
    """The method's hyperparameters: its defaults < the workspace's ``methods`` section < ``options.hparams``."""
    values = {**project.config.methods.get(method.name, {}), **options.hparams}
    return parse_model(method.Hyper, values, source=f"hyperparameters of {method.name}")


def repeated(samples: list, epochs: float) -> list:
    """``samples`` once per whole epoch, then the first fraction of them for a fractional last epoch."""
    return samples * int(epochs) + samples[: round((epochs % 1) * len(samples))]


def _samples(
    project: Project, task_names: list[str], options: TrainTaskOptions, union: bool
) -> tuple[list[TrainSample], dict[str, tuple[TaskSpec, int]]]:
    """The run's samples, and per task its spec and how many samples it gave; on a union (joint) each task's
    samples are repeated by its epochs, as the spec trains joint on every task "repeated by its epoch count"."""
    samples: list[TrainSample] = []
    counts: dict[str, tuple[TaskSpec, int]] = {}
    for name in task_names:
        spec = project.config.task(name)
        loaded = load_train_samples(project.data_root, spec) * spec.repeat
        if union:
            loaded = repeated(loaded, options.epochs_for(spec))
        samples += loaded
        counts[name] = (spec, len(loaded))
    return samples, counts


def train_run(
    project: Project, task_name: str, options: TrainTaskOptions | dict | None = None
) -> tuple[ContinualMethod, TrainRun, list[str]]:
    """The method, the run it is asked to train (options resolved, any replay buffer mixed in) and the tasks whose
    data it learns (a replayed task's too)."""
    options = stage_options(project.config, TRAIN_TASK.name, options)
    method = get_method(options.method or project.config.method)
    options = options.model_copy(update={"method": method.name})  # the same run hashes the same, however named
    names, task_id, spec = method.training_tasks(project, task_name)
    if options.vote_size is None and spec is not None:
        options = options.model_copy(update={"vote_size": spec.vote_size})  # the registry's, hashed as resolved
    samples, counts = _samples(project, names, options, union=spec is None)
    run = TrainRun(
        project,
        method.name,
        task_name,
        task_id,
        spec,
        samples,
        options,
        method_hyper(project, method, options),
        method.stage(TRAIN_TASK.name),
        union=counts if spec is None else None,
    )
    run.replayed = method.replay(run)
    run.samples += [sample for buffer in run.replayed.values() for sample in buffer]
    return method, run, [*names, *run.replayed]


def train_task(
    project: Project,
    task_name: str,
    options: TrainTaskOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
    log_to: Sequence[str] = (),
) -> StageResult:
    """Train task ``task_name``; ``options`` (what the caller sets) go over the workspace's defaults; ``log_to``
    also streams the step log to tensorboard / wandb (not hashed)."""
    check_available(log_to)
    method, run, names = train_run(project, task_name, options)
    if not method.shardable and launched() and parameter_sharding():
        raise UserError(
            f"{method.name}'s penalty reads the parameters themselves, which FSDP2 shards: train it "
            "without --use_fsdp (DDP keeps whole parameters)"
        )
    options, spec = run.options, run.spec
    inputs = method.carried(run) + parity_allocations(run)
    settings = loop_settings(options, spec, run.union)
    sources = {name: source_fingerprint(project, project.config.task(name)) for name in names}
    config = {
        "options": hashed(options),
        "method": method.name,
        "hyper": run.hyper.model_dump(),
        "loop": settings.__dict__,
        "sources": sources,
    }

    def compute(writer: Writer) -> None:
        import shutil

        import torch

        from .training.chat import text_length
        from .training.inputs import InputPipeline, worker_count
        from .training.loop import ParamGroup, train
        from .training.memory import peak_memory, reset_peak_memory

        rss_reset = reset_peak_memory()
        adapter = project.load_model()
        torch.manual_seed(options.seed)  # adapters are drawn at random: the same config gives the same weights
        trainer = method.trainer(run, adapter)
        model = trainer.model
        if options.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ckpt = checkpoint_dir(project, run.stage, task_name, config)
        logs = project.root / ".runs" / "logs" / run.stage / task_name
        with open_loggers(log_to, logs, f"{run.stage}/{task_name}", config) as loggers:
            pipeline = InputPipeline(trainer.inputs, adapter.on_device, worker_count(options.input_workers))
            result = train(
                model,
                [ParamGroup(method.name, trainer.params)],
                step_loss(trainer),
                len(run.samples),
                settings,
                checkpoint_dir=ckpt,
                progress=progress,
                description=f"{run.stage} {task_name}",
                loggers=loggers,
                lengths=[text_length(s) for s in run.samples],
                inputs=pipeline,
                gradient_hook=trainer.gradient_hook,
            )
        model.eval()
        trainer.save(writer)
        write_parquet(writer.path(TRAIN_TASK.files.log), {k: [row.get(k) for row in result.log] for k in result.log[0]})
        if result.warnings:
            writer.meta["warnings"] = [*writer.meta.get("warnings", []), *result.warnings]
        if run.replayed:
            writer.meta["replay"] = {task: [s.id for s in buffer] for task, buffer in run.replayed.items()}
        writer.meta.update(
            steps=result.steps,
            final_loss=result.log[-1]["loss"],
            resumed_from=result.resumed_from,
            trainable_parameters=sum(p.numel() for p in trainer.params),
            sharding=result.sharding,
            **peak_memory(rss_reset),
            **trainer.summary(),
        )
        shutil.rmtree(ckpt, ignore_errors=True)

    return run_stage(project, run.stage, task_name, config=config, inputs=inputs, compute=compute, force=force)
