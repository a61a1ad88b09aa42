"""RoE training on the standard loop (spec roe.md §5): named parameter groups, the loss over a batch, and
the stage callback. No loop of its own."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import torch

from ..data.samples import TrainSample
from ..options import RouteTrainOptions
from ..progress import Progress, silent
from ..registry import ROUTE_TRAIN
from ..training.chat import chat_examples
from ..training.inputs import InputPipeline, worker_count
from ..training.loop import LoopResult, LoopSettings, ParamGroup, batch_plan, train
from .backbone import add_lora, llm_parameters, load_stage2, lora_parameters, projector_parameters, save_stage2
from .fixed import FixedRouting
from .loss import per_example_ce, roe_objective
from .modules import PREFIX, RoEModules
from .plan import TrainingRouting, routing
from .schedule import STAGE_NAMES, RoEStageCallback, ScheduleState, StageSchedule
from .segments import ImageTokens, training_segments


def parameter_groups(
    adapter, modules: RoEModules | None, settings: RouteTrainOptions, fixed: FixedRouting | None = None
) -> tuple[list[ParamGroup], dict[str, set[int]]]:
    """Non-empty groups, each named and with its own base lr, and the stages each one trains in (spec §5.4). The
    backbone's groups come from the family's declaration (its LM and projector), not from parameter names. Under
    ``fixed`` routing (a baseline) nothing reads the routers or tokens, so only the adapters are RoE's to train."""
    roe = dict(modules.named_parameters(prefix=PREFIX)) if modules is not None else {}
    if fixed is not None:
        roe = {n: p for n, p in roe.items() if ".adapter." in n}
    groups = [
        ParamGroup("roe_router", [p for n, p in roe.items() if ".router." in n], settings.router_lr or settings.roe_lr),
        ParamGroup("roe_adapter", [p for n, p in roe.items() if ".adapter." in n], settings.roe_lr),
        ParamGroup("roe_tokens", [p for n, p in roe.items() if ".tokens." in n], settings.roe_lr),
    ]
    trained_in = {"roe_router": {1, 2}, "roe_adapter": {0, 1, 2}, "roe_tokens": {1, 2}}
    if settings.stage2_mode == "full":
        groups.append(ParamGroup("backbone_llm", [p for _, p in llm_parameters(adapter)], settings.backbone_lr))
    if settings.stage2_mode == "lora":
        groups.append(ParamGroup("backbone_lora", [p for _, p in lora_parameters(adapter.model)], settings.lora_lr))
    if settings.stage2_mode != "frozen":
        groups.append(ParamGroup("projector", [p for _, p in projector_parameters(adapter)], settings.backbone_lr))
    trained_in |= {"backbone_llm": {2}, "backbone_lora": {2}, "projector": {2}}
    groups = [g for g in groups if g.params]
    return groups, {g.name: trained_in[g.name] for g in groups}


def loop_settings(settings: RouteTrainOptions, seed: int, checkpoint_every: int | None = None) -> LoopSettings:
    """The standard loop's settings for a RoE run (and its dense twin): roe_lr is the loop's default lr, each group
    carries its own; weight decay 0 (spec §5.4)."""
    every = settings.checkpoint_every if checkpoint_every is None else checkpoint_every
    return LoopSettings(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.roe_lr,
        weight_decay=0.0,
        warmup_ratio=settings.warmup_ratio,
        seed=seed,
        checkpoint_every=every,
        grad_accum=settings.grad_accum,
    )


def load_for_training(project, settings: RouteTrainOptions, warm: Path | None = None):
    """A fresh copy of the workspace's base model, with stage 2's LoRA injected in ``lora`` mode, or, with ``warm``
    (`warm_start`'s folder), the dense twin's stage-2 tensors loaded into it: (adapter, its LoRA config or None)."""
    adapter = project.load_model()
    if warm is not None:
        return adapter, load_stage2(lambda name: warm / name, adapter, settings.stage2_mode)
    lora = add_lora(adapter, settings.lora_rank, settings.lora_alpha) if settings.stage2_mode == "lora" else None
    return adapter, lora


# What the dense twin's training and scores depend on of route-train's options: RoE's own knobs (ρ, the hinge, the
# router input and prior, τ₀, roe and router lrs, adapter rank, always-executed layers) leave the twin as it is.
TWIN_OPTIONS = (
    "epochs",
    "batch_size",
    "grad_accum",
    "backbone_lr",
    "stage2_mode",
    "lora_rank",
    "lora_alpha",
    "lora_lr",
    "stage1_start",
    "stage2_start",
    "warmup_ratio",
    "data_fraction",
    "eval_batch_size",
    "max_eval_samples",
)


WARM = "warm"  # under a twin's checkpoint folder: the twin's stage-2 tensors, where warm-started runs start
COLD_SCORES, WARM_SCORES = "dense_scores.json", "warm_dense_scores.json"


def _train_twin(project, samples, settings, loop, progress, checkpoint_dir: Path | None, warm: Path | None):
    twin, lora = load_for_training(project, settings, warm)
    train_roe(twin, None, samples, settings, loop, progress=progress, checkpoint_dir=checkpoint_dir)
    return twin, lora


def _score_once(file: Path | None, score: Callable[[], dict[str, float]]) -> dict[str, float]:
    from dmole.artifacts.io import read_json, write_json

    from ..distributed import is_main

    if file is not None and file.is_file():
        return read_json(file)
    scores = score()
    if file is not None and is_main():
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json(file, scores)
    return scores


def warm_start(
    project,
    samples: Sequence[TrainSample],
    sets,
    settings: RouteTrainOptions,
    loop: LoopSettings,
    *,
    progress: Progress = silent,
    checkpoint_dir: Path,
) -> Path:
    """The folder of the dense twin's stage-2 tensors (the base fine-tuned on the tasks, every layer executed),
    where a warm-started run starts, as the paper trains RoE on a model already tuned on its data. Trained once per
    ``checkpoint_dir`` (the folder appears whole or not at all); the twin's scores are kept beside it, as the cold
    twin's (`dense_twin_scores` without ``warm`` reads them)."""
    from ..distributed import barrier, is_main
    from .evaluation import evaluate_dense

    folder = checkpoint_dir / WARM
    if folder.is_dir():
        return folder
    twin, lora = _train_twin(project, samples, settings, loop, progress, checkpoint_dir / "twin", None)
    _score_once(
        checkpoint_dir / COLD_SCORES,
        lambda: evaluate_dense(twin, sets, settings.eval_batch_size, progress, label="dense twin"),
    )
    if is_main():
        partial = checkpoint_dir / f"{WARM}.partial"
        shutil.rmtree(partial, ignore_errors=True)

        def path(name: str) -> Path:
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            return partial / name

        save_stage2(path, twin, settings.stage2_mode, lora)
        partial.rename(folder)
    barrier()
    return folder


def dense_twin_scores(
    project,
    samples: Sequence[TrainSample],
    sets,
    settings: RouteTrainOptions,
    loop: LoopSettings,
    *,
    progress: Progress = silent,
    checkpoint_dir: Path | None = None,
    warm: Path | None = None,
) -> dict[str, float]:
    """The same fine-tuning with every layer executed (nothing to skip), scored: from the base, or, with ``warm``,
    continued from the twin as the warm-started runs are (the same steps on top). Kept beside the checkpoints once
    done, so a resumed run does not train the twin again."""
    from .evaluation import evaluate_dense

    def score() -> dict[str, float]:
        run = "twin" if warm is None else "twin-warm"
        twin, _ = _train_twin(
            project,
            samples,
            settings,
            loop,
            progress,
            checkpoint_dir / run if checkpoint_dir is not None else None,
            warm,
        )
        return evaluate_dense(twin, sets, settings.eval_batch_size, progress, label="dense twin")

    name = COLD_SCORES if warm is None else WARM_SCORES
    return _score_once(checkpoint_dir / name if checkpoint_dir is not None else None, score)


def _with_status(progress: Progress, status: dict) -> Progress:
    """The loop reports the loss; the bar also shows the stage and the current soft skip rate."""

    @contextmanager
    def wrapped(description: str, total: int):
        with progress(description, total) as bar:

            class Tracker:
                def advance(self, steps: int = 1, **fields: object) -> None:
                    bar.advance(steps, **status, **fields)

            yield Tracker()

    return wrapped


def train_roe(
    adapter,
    modules: RoEModules | None,
    samples: Sequence[TrainSample],
    settings: RouteTrainOptions,
    loop: LoopSettings,
    *,
    progress: Progress = silent,
    checkpoint_dir: Path | None = None,
    around: Callable[[list[int], dict], AbstractContextManager] | None = None,
    fixed: FixedRouting | None = None,
) -> LoopResult:
    """Train ``modules`` (attached to ``adapter.model``) and, in ``full`` / ``lora`` mode, the LLM (or its LoRA)
    and the projector. ``around(indices, batch)``, if given, is the context each batch's forward runs in (the experts
    of a continual model, routed per sample).

    With ``modules`` None this trains the dense twin: the same data, schedule, backbone groups, lrs and
    gates, with every layer executed and plain per-example cross-entropy (there is nothing to skip). With ``fixed``
    (a baseline) the given decisions replace the stage-0 draws and the routers in every stage.
    """
    model = adapter.model
    for p in model.parameters():
        p.requires_grad_(False)
    groups, trained_in = parameter_groups(adapter, modules, settings, fixed)
    schedule = StageSchedule(
        len(batch_plan(len(samples), loop)),
        settings.skip_ratio,
        settings.stage1_start,
        settings.stage2_start,
        tau0=settings.tau0,
    )
    state = ScheduleState()
    callback = RoEStageCallback(schedule, state, groups, trained_in, loop.warmup_ratio)
    images = ImageTokens.of(adapter)
    status: dict = {}

    def loss_fn(prepared: torch.nn.Module, indices: list[int], _scope, batch: dict) -> dict[str, torch.Tensor]:
        status["stage"] = STAGE_NAMES[state.stage]
        if modules is None and not any(p.requires_grad for g in groups for p in g.params):
            return {"loss": torch.zeros((), requires_grad=True)}  # the twin's backbone is gated off: a no-op step
        batch = dict(batch)
        labels = batch.pop("labels")
        with ExitStack() as stack:
            if around is not None:
                stack.enter_context(around(indices, batch))
            if modules is None:
                return {"loss": per_example_ce(prepared(**batch).logits, labels).mean()}
            segments = training_segments(batch["input_ids"], labels, batch["attention_mask"], images)
            ctx = stack.enter_context(
                routing(TrainingRouting(segments, state, keys=list(indices), seed=loop.seed, fixed=fixed))
            )
            logits = prepared(**batch).logits
        soft_skip = ctx.soft_skip()
        hinged = ctx.straight_through_skip() if settings.skip_estimate == "straight-through" else soft_skip
        out = roe_objective(
            per_example_ce(logits, labels),
            hinged,
            rho=settings.skip_ratio,
            lam=settings.hinge_weight,
            gamma=settings.hinge_gamma,
            scope=settings.hinge_scope,
        )
        out |= {"soft_skip": soft_skip.mean().detach(), "hard_skip": torch.tensor(ctx.hard_skip())}
        status["skip"] = float(out["soft_skip"])
        return out

    model.train()
    try:
        pipeline = InputPipeline(
            lambda indices: adapter.train_inputs(chat_examples([samples[i] for i in indices])),
            adapter.on_device,
            worker_count(settings.input_workers),
        )
        return train(
            model,
            groups,
            loss_fn,
            len(samples),
            loop,
            callbacks=[callback],
            checkpoint_dir=checkpoint_dir,
            progress=_with_status(progress, status),
            inputs=pipeline,
            description=ROUTE_TRAIN.name + ("" if modules is not None else ": dense twin"),
        )
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
