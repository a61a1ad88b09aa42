"""Stage `train-task`: train task t's adapter for the chosen method and save it as a PEFT adapter folder.

D-MoLE (spec/dmole.md §8) trains only task t's new experts, on exactly its allocated modules, with
each sample's one past task routed in from the cached embeddings (frozen experts in the graph). The
baselines go through the same loop with their own model assembly (see `methods.py`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from artifacts import Version, Writer, config_hash
from artifacts.io import read_json, write_json, write_parquet

from .config import Method, Strict, TaskSpec
from .data.samples import TrainSample
from .data.tasks import load_train_samples
from .dmole.experts import ExpertModel, LoraSettings, adapter_name
from .dmole.routing import training_partner, training_partner_vote
from .embed import source_fingerprint
from .errors import UserError
from .fit_router import load_bank, load_embeddings
from .methods import BASELINE_LORA, EXPERT_FOLDER, JOINT_TASK, dmole_model, merged_model, towers
from .naming import is_dmole, method_flag, stage_name
from .progress import Progress, silent
from .project import Project
from .runner import StageResult, run_stage
from .training.chat import chat_examples, supervised_tokens, text_length
from .training.loop import LoopSettings, ParamGroup, train
from .training.trackers import check_available, open_loggers

STAGE = "train-task"


class TrainTaskOptions(Strict):
    method: Method | None = Field(default=None, description="dmole, seq-lora, finetune or joint")
    epochs: float | None = Field(default=None, gt=0, description="default: the task's registry value, else 1")
    batch_size: int | None = Field(
        default=None, gt=0, description="global batch of one optimizer step = per device x devices x grad_accum; "
                                        "default: the task's registry value, else 8")
    grad_accum: int = Field(default=1, gt=0, description="micro-batches per optimizer step on each device")
    max_length: int | None = Field(default=2048, gt=0, description="tokens kept per sample (never cutting image "
                                                                    "tokens); None keeps all")
    group_by_length: bool = Field(default=False, description="batches of samples of similar length (the "
                                                             "reference's group_by_length)")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    clip: float = Field(default=1.0, ge=0)
    rank: int = Field(default=8, gt=0, description="D-MoLE expert rank")
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    train_routing: str = Field(default="per-sample", pattern="^(per-sample|batch-vote)$")
    checkpoint_every: int = Field(default=50, ge=0, description="optimizer steps between resume checkpoints")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="bf16 autocast: auto (on CUDA only), bf16 (always) or fp32 (never)")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in backward to save memory")
    seed: int = 42

    def loop(self, task: TaskSpec | None) -> LoopSettings:
        epochs = self.epochs or (task.epochs if task and task.epochs else 1.0)
        batch = self.batch_size or (task.batch_size if task and task.batch_size else 8)
        return LoopSettings(epochs=epochs, batch_size=batch, lr=self.lr, weight_decay=self.weight_decay,
                            warmup_ratio=self.warmup_ratio, clip=self.clip, seed=self.seed,
                            checkpoint_every=self.checkpoint_every, precision=self.precision,
                            grad_accum=self.grad_accum, group_by_length=self.group_by_length)


def resolved_method(project: Project, options: TrainTaskOptions) -> str:
    return options.method or project.config.method


def _samples(project: Project, task_names: list[str]) -> list[TrainSample]:
    samples: list[TrainSample] = []
    for name in task_names:
        spec = project.config.task(name)
        samples += load_train_samples(project.data_root, spec) * spec.repeat
    return samples


def _past_partners(project: Project, task_name: str, task_id: int, samples: list[TrainSample],
                   ) -> tuple[list[int | None], np.ndarray, np.ndarray, list[Version]]:
    """Per sample, the past task whose frozen experts join (spec §8), from the cached embeddings.

    Returns the partners, the router errors, the thresholds and the artifacts they came from.
    """
    if task_id == 1:
        return [None] * len(samples), np.zeros((len(samples), 0)), np.zeros(0), []
    past = project.config.task_names[:task_id - 1]
    embedded = project.store.require("embed", task_name, hint=f"dmole embed --task {task_name}")
    ids, matrix, metadata = load_embeddings(embedded, "train")
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    missing = [s.id for s in samples if s.id not in position]
    if missing:
        raise UserError(f"sample {missing[0]!r} of '{task_name}' has no cached embedding; re-run "
                        f"`dmole embed --task {task_name}`")
    bank = load_bank(project, past)
    errors = bank.errors(matrix[[position[s.id] for s in samples]], metadata)
    partners = training_partner(errors, bank.thresholds)
    routers = [project.store.require("fit-router", name) for name in past]
    return partners, errors, bank.thresholds, [embedded, *routers]


def _save_expert(model, name: str, writer: Writer, sidecar: dict) -> None:
    """Save one adapter as a standalone PEFT folder: adapter_model.safetensors + adapter_config.json.

    PEFT shortens long ``target_modules`` lists to unique suffixes when it injects an adapter; the saved
    config gets the exact sorted full names back, which PEFT matches as exact keys.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[name])
        saved = Path(tmp) / name
        config = read_json(saved / "adapter_config.json")
        config["target_modules"] = sidecar["target_modules"]
        write_json(saved / "adapter_config.json", config)
        for file in saved.iterdir():
            shutil.copy2(file, writer.path(f"{EXPERT_FOLDER}/{file.name}"))
    write_json(writer.path(f"{EXPERT_FOLDER}/dmole_expert.json"), sidecar)


def checkpoint_dir(project: Project, stage: str, task: str, config: dict) -> Path:
    return project.root / ".runs" / stage / task / config_hash(config)[:16]


def train_task(project: Project, task_name: str, options: TrainTaskOptions = TrainTaskOptions(), *,
               force: bool = False, progress: Progress = silent, log_to: Sequence[str] = ()) -> StageResult:
    """Train task ``task_name``; ``log_to`` also streams the step log to tensorboard / wandb (not hashed)."""
    check_available(log_to)
    method = resolved_method(project, options)
    options = options.model_copy(update={"method": method})  # the same run hashes the same, however named
    stage = stage_name(STAGE, method)
    if method == "joint":
        if task_name != JOINT_TASK:
            raise UserError(f"joint trains once on every task: use --task {JOINT_TASK}")
        names, task_id, spec = project.config.task_names, 1, None
    else:
        spec = project.config.task(task_name)
        names, task_id = [task_name], project.config.task_index(task_name)
    samples = _samples(project, names)
    sources = {name: source_fingerprint(project, project.config.task(name)) for name in names}
    inputs: list[Version] = []
    partners: list[int | None] = []
    if is_dmole(method):
        flag = method_flag(method)
        allocation = project.store.require(stage_name("allocate", method), task_name,
                                           hint=f"dmole allocate --task {task_name}{flag}")
        partners, errors, thresholds, routing_inputs = _past_partners(project, task_name, task_id, samples)
        previous = [project.store.require(stage, n, hint=f"dmole train-task --task {n}{flag}")
                    for n in project.config.task_names[:task_id - 1]]
        inputs = [allocation, *routing_inputs, *previous]
    elif method == "seq-lora":
        inputs = [project.store.require(stage, n, hint=f"dmole train-task --task {n} --method seq-lora")
                  for n in project.config.task_names[:task_id - 1]]
    settings = options.loop(spec)
    config = {"options": options.model_dump(), "method": method, "loop": settings.__dict__, "sources": sources}

    def compute(writer: Writer) -> None:
        import torch

        adapter = project.load_model()
        name = adapter_name(task_id)
        torch.manual_seed(options.seed)  # LoRA A is drawn at random: the same config gives the same expert
        if is_dmole(method):
            arch = read_json(allocation.file("arch.json"))
            experts, _ = dmole_model(project, adapter, task_id - 1, method)
            lora = LoraSettings(options.rank, options.alpha, options.dropout)
            modules = arch["selected"]
            trainable = experts.add_expert(task_id, modules, lora)
            if sum(p.numel() for p in trainable) != arch["expert_parameters"]:
                raise RuntimeError("trainable parameters differ from the allocation's expert size")
            routes = [(task_id,) + ((p,) if p is not None else ()) for p in partners]
        else:
            base = merged_model(project, adapter, task_id - 1)[0] if method == "seq-lora" else adapter.model
            experts = ExpertModel(base, towers(adapter), str(project.model_path))
            modules = [c.name for c in adapter.candidates(include_mlp=True)]
            trainable = experts.add_expert(task_id, modules, BASELINE_LORA)
            routes = [(task_id,)] * len(samples)
            lora = BASELINE_LORA
        model = experts.model
        if options.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        vote = is_dmole(method) and options.train_routing == "batch-vote" and task_id > 1

        def loss_fn(prepared, indices: list[int], scope) -> dict:
            batch_routes = [routes[i] for i in indices]
            if vote:
                partner = training_partner_vote(errors[indices], thresholds)
                batch_routes = [(task_id,) + ((partner,) if partner else ())] * len(indices)
            batch = adapter.train_batch(chat_examples([samples[i] for i in indices]), options.max_length)
            # held through backward: gradient checkpointing re-runs the routed layers there
            scope.enter_context(experts.routed(batch_routes, vision_rows=adapter.vision_row_samples(batch)))
            return {"loss": prepared(**batch).loss, "count": supervised_tokens(batch["labels"])}

        ckpt = checkpoint_dir(project, stage, task_name, config)
        logs = project.root / ".runs" / "logs" / stage / task_name
        with open_loggers(log_to, logs, f"{stage}/{task_name}", config) as loggers:
            result = train(model, [ParamGroup(name, trainable)], loss_fn, len(samples), settings, checkpoint_dir=ckpt,
                           progress=progress, description=f"{stage} {task_name}", loggers=loggers,
                           lengths=[text_length(s) for s in samples])
        model.eval()
        sidecar = {"task": task_name, "task_id": task_id, "method": method, "adapter_name": name,
                   "rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                   "target_modules": sorted(modules),
                   "train_routing": options.train_routing if is_dmole(method) else "oracle",
                   "steps": result.steps, "resumed_from_step": result.resumed_from}
        _save_expert(model, name, writer, sidecar)
        write_parquet(writer.path("train_log.parquet"), {k: [row.get(k) for row in result.log]
                                                         for k in result.log[0]})
        if is_dmole(method):
            write_parquet(writer.path("routing_train.parquet"), {
                "sample_id": [s.id for s in samples], "past_task": partners,
                "errors": [list(map(float, row)) for row in errors] if errors.size else [[] for _ in samples]})
        writer.meta.update(steps=result.steps, final_loss=result.log[-1]["loss"], resumed_from=result.resumed_from,
                           trainable_parameters=sum(p.numel() for p in trainable),
                           samples_with_past_expert=sum(p is not None for p in partners))
        shutil.rmtree(ckpt, ignore_errors=True)

    return run_stage(project, stage, task_name, config=config, inputs=inputs, compute=compute, force=force)
