"""Stage `fit-router`: task k's autoencoder router and its threshold, plus the routing confusion matrix."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from artifacts import Version, Writer
from artifacts.io import read_json, read_parquet, table_metadata, table_to_numpy, write_json

from .config import Strict
from .dmole.router import Autoencoder, RouterSettings, fit_router as train_router, reconstruction_errors
from .dmole.routing import acceptance_warning
from .errors import UserError
from .project import Project
from .runner import StageResult, run_stage

STAGE = "fit-router"
NONE = "none"


class FitRouterOptions(Strict):
    quantile: float = Field(default=0.95, gt=0, lt=1, description="threshold = this quantile of in-task errors")
    hidden: int = Field(default=128, gt=0)
    output_activation: str = Field(default="sigmoid", pattern="^(sigmoid|none)$")
    lr: float = Field(default=5e-3, gt=0)
    min_lr: float = Field(default=1e-3, ge=0)
    batch_size: int = Field(default=1024, gt=0)
    max_epochs: int = Field(default=1000, gt=0)
    patience: int = Field(default=10, gt=0)
    max_fit_samples: int | None = Field(default=None, gt=0, description="seeded cap on the fit set")
    min_acceptance: float = Field(default=0.5, ge=0, le=1,
                                  description="warn when the router accepts fewer of its own test samples")
    seed: int = 42

    def settings(self) -> RouterSettings:
        return RouterSettings(hidden=self.hidden, output_activation=self.output_activation, lr=self.lr,
                              min_lr=self.min_lr, batch_size=self.batch_size, max_epochs=self.max_epochs,
                              patience=self.patience, quantile=self.quantile, seed=self.seed)


def load_embeddings(version: Version, split: str) -> tuple[list[str], np.ndarray, dict[str, str]]:
    table = read_parquet(version.file(f"{split}.parquet"))
    return table.column("sample_id").to_pylist(), table_to_numpy(table, "embedding"), table_metadata(table)


def require_embeddings(project: Project, task: str) -> Version:
    return project.store.require("embed", task, hint=f"dmole embed --task {task}")


def fit_router(project: Project, task_name: str, options: FitRouterOptions = FitRouterOptions(), *,
               force: bool = False) -> StageResult:
    project.config.task(task_name)
    embedded = require_embeddings(project, task_name)

    def compute(writer: Writer) -> None:
        from safetensors.torch import save_file

        _, matrix, metadata = load_embeddings(embedded, "train")
        if options.max_fit_samples and len(matrix) > options.max_fit_samples:
            keep = sorted(random.Random(options.seed).sample(range(len(matrix)), options.max_fit_samples))
            matrix = matrix[keep]
        fitted = train_router(matrix, options.settings())
        save_file({k: v.contiguous() for k, v in fitted.model.state_dict().items()}, writer.path("router.safetensors"))
        record = {"config": options.model_dump(), "quantile": options.quantile, "threshold": fitted.threshold,
                  "epochs": fitted.epochs, "final_loss": fitted.final_loss, "n_fit": int(len(matrix)),
                  "seed": options.seed, "dim": int(matrix.shape[1]), "quantiles": fitted.quantiles,
                  "embedding": metadata}
        write_json(writer.path("router.json"), record)
        _, test, _ = load_embeddings(embedded, "test")
        accepted = int((reconstruction_errors(fitted.model, test) < fitted.threshold).sum()) if len(test) else 0
        warning = acceptance_warning(task_name, accepted, len(test), options.min_acceptance, where="fit-router")
        writer.meta.update(threshold=fitted.threshold, epochs=fitted.epochs, n_fit=int(len(matrix)),
                           own_test_accepted=accepted, n_test=len(test), warnings=[warning] if warning else [])

    return run_stage(project, STAGE, task_name, config={"options": options.model_dump()}, inputs=[embedded],
                     compute=compute, force=force)


@dataclass
class RouterBank:
    """Routers of tasks 1..K in sequence order, scoring embeddings in fp32 against their thresholds."""

    names: list[str]
    models: list[Autoencoder]
    thresholds: np.ndarray
    embedding_metadata: dict[str, str]

    def errors(self, embeddings: np.ndarray, metadata: dict[str, str]) -> np.ndarray:
        """[samples, K] reconstruction errors; refuses embeddings computed differently from the fit data."""
        if metadata != self.embedding_metadata:
            changed = sorted(k for k in set(metadata) | set(self.embedding_metadata)
                             if metadata.get(k) != self.embedding_metadata.get(k))
            raise UserError(f"embeddings differ from the routers' fit data in {', '.join(changed)}; "
                            "re-run embed and fit-router")
        if len(embeddings) == 0:
            return np.zeros((0, len(self.models)))
        return np.stack([reconstruction_errors(model, embeddings) for model in self.models], axis=1)


def load_router(version: Version) -> tuple[Autoencoder, dict]:
    from safetensors.torch import load_file

    record = read_json(version.file("router.json"))
    state = load_file(version.file("router.safetensors"))
    model = Autoencoder(record["dim"], record["config"]["hidden"], record["config"]["output_activation"])
    model.load_state_dict(state)
    return model, record


def router_versions(project: Project, tasks: list[str]) -> list[Version]:
    return [project.store.require(STAGE, t, hint=f"dmole fit-router --task {t}") for t in tasks]


def load_bank(project: Project, tasks: list[str]) -> RouterBank:
    """The routers of ``tasks``; a missing router or threshold is a hard error (never a silent skip)."""
    models, thresholds, metadata = [], [], None
    for version in router_versions(project, tasks):
        model, record = load_router(version)
        models.append(model)
        thresholds.append(record["threshold"])
        if metadata is not None and record["embedding"] != metadata:
            raise UserError(f"router {version} was fitted on embeddings from a different model or template")
        metadata = record["embedding"]
    return RouterBank(list(tasks), models, np.asarray(thresholds, dtype=np.float64), metadata or {})


def routing_confusion(project: Project, scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Rows: the true task of each held-out test sample; columns: the top-1 accepted router, or "none"."""
    from .dmole.routing import candidates

    fitted = [t for t in project.config.task_names if project.store.latest(STAGE, t)]
    if not fitted:
        return {}
    bank = load_bank(project, fitted)
    confusion: dict[str, dict[str, int]] = {}
    for task in project.config.task_names:
        embedded = project.store.latest("embed", task)
        if embedded is None:
            continue
        _, matrix, metadata = load_embeddings(embedded, "test")
        row = {name: 0 for name in [*fitted, NONE]}
        for errors in bank.errors(matrix, metadata):
            accepted = candidates(errors, bank.thresholds, scale)
            row[fitted[accepted[0] - 1] if accepted else NONE] += 1
        confusion[task] = row
    return confusion
