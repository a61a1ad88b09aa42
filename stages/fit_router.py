"""Stage `fit-router`: task k's autoencoder router and its threshold, plus the routing confusion matrix."""

from __future__ import annotations

import random

from dmole.artifacts import Writer
from dmole.artifacts.io import write_json

from .dmole.bank import load_bank, load_embeddings, require_embeddings
from .dmole.routing import acceptance_warning
from .options import FitRouterOptions
from .progress import Progress, silent
from .project import Project
from .registry import EMBED, FIT_ROUTER
from .resolve import stage_options
from .runner import StageResult, run_stage

NONE = "none"


def fit_router(
    project: Project,
    task_name: str,
    options: FitRouterOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    """Fit ``task_name``'s router; ``options`` (what the caller sets) go over the workspace's defaults."""
    options = stage_options(project.config, FIT_ROUTER.name, options)
    project.config.task(task_name)
    embedded = require_embeddings(project, task_name)

    def compute(writer: Writer) -> None:
        from safetensors.torch import save_file

        from .dmole.router import fit_router as train_router
        from .dmole.router import reconstruction_errors

        _, matrix, metadata = load_embeddings(embedded, "train")
        if options.max_fit_samples and len(matrix) > options.max_fit_samples:
            keep = sorted(random.Random(options.seed).sample(range(len(matrix)), options.max_fit_samples))
            matrix = matrix[keep]
        fitted = train_router(matrix, options, progress, f"{FIT_ROUTER.name} {task_name}")
        save_file(
            {k: v.contiguous() for k, v in fitted.model.state_dict().items()}, writer.path(FIT_ROUTER.files.weights)
        )
        record = {
            "config": options.model_dump(),
            "quantile": options.quantile,
            "threshold": fitted.threshold,
            "epochs": fitted.epochs,
            "final_loss": fitted.final_loss,
            "n_fit": len(matrix),
            "seed": options.seed,
            "dim": int(matrix.shape[1]),
            "quantiles": fitted.quantiles,
            "embedding": metadata,
        }
        write_json(writer.path(FIT_ROUTER.files.router), record)
        _, test, _ = load_embeddings(embedded, "test")
        accepted = int((reconstruction_errors(fitted.model, test) < fitted.threshold).sum()) if len(test) else 0
        warning = acceptance_warning(task_name, accepted, len(test), options.min_acceptance, where=FIT_ROUTER.name)
        writer.meta.update(
            threshold=fitted.threshold,
            epochs=fitted.epochs,
            n_fit=len(matrix),
            own_test_accepted=accepted,
            n_test=len(test),
            warnings=[warning] if warning else [],
        )

    return run_stage(
        project,
        FIT_ROUTER.name,
        task_name,
        config={"options": options.model_dump()},
        inputs=[embedded],
        compute=compute,
        force=force,
    )


def routing_confusion(project: Project, scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Rows: the true task of each held-out test sample; columns: the top-1 accepted router, or "none"."""
    from .dmole.routing import candidates

    fitted = [t for t in project.config.task_names if project.store.latest(FIT_ROUTER.name, t)]
    if not fitted:
        return {}
    bank = load_bank(project, fitted)
    confusion: dict[str, dict[str, int]] = {}
    for task in project.config.task_names:
        embedded = project.store.latest(EMBED.name, task)
        if embedded is None:
            continue
        _, matrix, metadata = load_embeddings(embedded, "test")
        row = {name: 0 for name in [*fitted, NONE]}
        for errors in bank.errors(matrix, metadata):
            accepted = candidates(errors, bank.thresholds, scale)
            row[fitted[accepted[0] - 1] if accepted else NONE] += 1
        confusion[task] = row
    return confusion
