"""The per-task stage commands: each parses options, opens the workspace and calls one stage function."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from stages.naming import METHODS

from .common import (ForceOption, QuietOption, WorkspaceOption, handles_user_errors, open_project,
                     print_summary)
from .progress import rich_progress

TaskOption = Annotated[str, typer.Option("--task", "-t", help="Task name (see `dmole tasks`).")]



@handles_user_errors
def embed(
    task: TaskOption,
    batch_size: Annotated[Optional[int], typer.Option(help="Samples per forward pass. [default: 16]")] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Sequence representation (frozen base, no experts) of the task's train and test samples, to Parquet."""
    from stages.config import stage_options
    from stages.embed import STAGE, EmbedOptions, embed as run

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, EmbedOptions, {"batch_size": batch_size})
    print_summary(run(project, task, options, force=force, progress=rich_progress(quiet)))


@handles_user_errors
def fit_router(
    task: TaskOption,
    quantile: Annotated[Optional[float], typer.Option(help="Threshold = this quantile of the task's own "
                                                           "reconstruction errors. [default: 0.95]")] = None,
    max_fit_samples: Annotated[Optional[int], typer.Option(help="Seeded cap on the fit set. [default: all]")]
    = None,
    force: ForceOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Fit the task's autoencoder router on its training embeddings and set its threshold."""
    from stages.config import stage_options
    from stages.fit_router import STAGE, FitRouterOptions, fit_router as run

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, FitRouterOptions,
                            {"quantile": quantile, "max_fit_samples": max_fit_samples})
    print_summary(run(project, task, options, force=force))


MethodOption = Annotated[Optional[str], typer.Option(
    help=f"{', '.join(METHODS)}. [default: the workspace's method]")]


@handles_user_errors
def zc_score(
    task: TaskOption,
    portion: Annotated[Optional[float], typer.Option(help="Fraction p of the training set (at least 4 batches "
                                                          "of 2 are used). [default: 0.01]")] = None,
    include_mlp: Annotated[Optional[bool], typer.Option("--include-mlp/--attention-only",
                                                        help="Also score MLP projections. [default: attention only]")]
    = None,
    force: ForceOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Zero-cost proxy: gradient norm of every candidate module of both towers on the frozen base."""
    from stages.config import stage_options
    from stages.zc_score import STAGE, ZcScoreOptions, zc_score as run

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, ZcScoreOptions, {"portion": portion, "include_mlp": include_mlp})
    print_summary(run(project, task, options, force=force))


@handles_user_errors
def allocate(
    task: TaskOption,
    budget: Annotated[Optional[str], typer.Option(help="A fraction of the candidate modules (0.5) or a "
                                                       "parameter count (2M, 500k). [default: 0.5]")] = None,
    rank: Annotated[Optional[int], typer.Option(help="Expert rank, for parameter budgets. [default: 8]")] = None,
    method: Annotated[Optional[str], typer.Option(
        help="dmole, or one of its ablations, each a named method with its own artifacts: dmole-vision-only, "
             "dmole-language-only (experts in one tower), dmole-pooled (one ranking over both towers), "
             "dmole-uniform (the same evenly spread modules for every task). [default: the workspace's method]")]
    = None,
    force: ForceOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Choose the task's expert modules: budget split between towers by gradient share (vision >= 25%)."""
    from stages.allocate import STAGE, AllocateOptions, allocate as run
    from stages.config import stage_options

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, AllocateOptions, {"budget": budget, "rank": rank, "method": method})
    print_summary(run(project, task, options, force=force))


@handles_user_errors
def train_task(
    task: TaskOption,
    method: MethodOption = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs. [default: the task's registry value, else 1]")]
    = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Global batch of one optimizer step = per device x devices x grad-accum. [default: registry value, "
             "else 8]")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(
        help="Micro-batches per optimizer step on each device (same step, less memory). [default: 1]")] = None,
    max_length: Annotated[Optional[int], typer.Option(
        help="Tokens kept per sample; image tokens are never cut. [default: 2048]")] = None,
    group_by_length: Annotated[Optional[bool], typer.Option(
        "--group-by-length/--no-group-by-length",
        help="Batch samples of similar length together (the reference does). [default: off]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate. [default: 1e-4]")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(
        help="Optimizer steps between resume checkpoints; a killed run resumes from the last one. [default: 50]")]
    = None,
    precision: Annotated[Optional[str], typer.Option(
        help="bf16 autocast: auto (on CUDA only), bf16 (always) or fp32 (never). [default: auto]")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations during backward: less memory, more compute. [default: off]")] = None,
    log_to: Annotated[Optional[str], typer.Option(
        "--log-to", help="Also stream the per-step log to tensorboard or wandb (optional packages).")] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Train the task's new LoRA experts (D-MoLE) or the baseline's adapter; resumes automatically."""
    from stages.config import stage_options
    from stages.train_task import STAGE, TrainTaskOptions, train_task as run

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, TrainTaskOptions,
                            {"method": method, "epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum,
                             "max_length": max_length, "group_by_length": group_by_length, "lr": lr,
                             "checkpoint_every": checkpoint_every, "precision": precision,
                             "gradient_checkpointing": gradient_checkpointing})
    print_summary(run(project, task, options, force=force, progress=rich_progress(quiet),
                      log_to=[log_to] if log_to else []))


@handles_user_errors
def eval_(
    after: Annotated[Optional[str], typer.Option(help="Evaluate the model as it stands after this task.")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="Evaluate the base model (row 0).")] = False,
    method: MethodOption = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Generation batch size. [default: 8]")] = None,
    routing: Annotated[Optional[str], typer.Option(
        help="per-sample (default, batch-size independent) or batch-vote (the reference).")] = None,
    threshold_scale: Annotated[Optional[float], typer.Option(help="Multiply every router threshold. [default: 1]")]
    = None,
    second_expert: Annotated[Optional[str], typer.Option(
        help="D-MoLE's rule for a second expert: margin (only within second_margin x the first's relative "
             "error), any (every accepting router, the paper's top-2) or weighted (by router confidence). "
             "[default: margin]")] = None,
    threshold_scales: Annotated[Optional[str], typer.Option(
        help="D-MoLE threshold sensitivity: evaluate after --after once per comma-separated factor (e.g. "
             "0.5,0.75,1,1.5,2), into one threshold-sweep artifact that the report tabulates.")] = None,
    caption_tokenizer: Annotated[Optional[str], typer.Option(help="simple (default) or ptb (needs java).")] = None,
    roe: Annotated[bool, typer.Option("--roe", help="Evaluate the latest route-train weights: dense versus RoE, "
                                                    "skip statistics (stage roe-eval).")] = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Evaluate on the test split of every task (seen and unseen), greedy decoding, each family's metric."""
    from stages.config import stage_options
    from stages.errors import UserError
    from stages.evaluate import STAGE, ZERO_SHOT, EvalOptions, evaluate as run

    if roe:
        from .roe_cmds import run_roe_eval

        run_roe_eval(workspace, batch_size=batch_size, force=force, quiet=quiet)
        return
    if zero_shot == (after is not None):
        raise UserError("give exactly one of --after TASK or --zero-shot")
    project = open_project(workspace)
    options = stage_options(project.config, STAGE, EvalOptions,
                            {"method": method, "batch_size": batch_size, "routing": routing,
                             "threshold_scale": threshold_scale, "caption_tokenizer": caption_tokenizer,
                             "second_expert": second_expert})
    if threshold_scales is not None:
        from stages.evaluate import threshold_sweep

        if after is None:
            raise UserError("--threshold-scales sweeps the model after one task: give --after TASK")
        try:
            scales = [float(part) for part in threshold_scales.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--threshold-scales takes comma-separated numbers, got {threshold_scales!r}") from None
        print_summary(threshold_sweep(project, after, scales, options, force=force, progress=rich_progress(quiet)))
        return
    print_summary(run(project, ZERO_SHOT if zero_shot else after, options, force=force, progress=rich_progress(quiet)))


def register(app: typer.Typer) -> None:
    app.command()(embed)
    app.command("fit-router")(fit_router)
    app.command("zc-score")(zc_score)
    app.command()(allocate)
    app.command("train-task")(train_task)
    app.command("eval")(eval_)
