"""The routers of a task sequence as one bank, and the cached embeddings they score (spec/dmole.md §9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dmole.artifacts import Version
from dmole.artifacts.io import read_json, read_parquet, table_metadata, table_to_numpy

from ..errors import UserError
from ..registry import EMBED, FIT_ROUTER

if TYPE_CHECKING:  # the router module imports torch, which checking a stage's inputs never needs
    from .router import Autoencoder


def load_embeddings(version: Version, split: str) -> tuple[list[str], np.ndarray, dict[str, str]]:
    table = read_parquet(version.file(EMBED.files.split.format(split=split)))
    return table.column("sample_id").to_pylist(), table_to_numpy(table, "embedding"), table_metadata(table)


def require_embeddings(project, task: str) -> Version:
    return project.store.require(EMBED.name, task, hint=EMBED.hint(task))


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
            changed = sorted(
                k
                for k in set(metadata) | set(self.embedding_metadata)
                if metadata.get(k) != self.embedding_metadata.get(k)
            )
            raise UserError(
                f"embeddings differ from the routers' fit data in {', '.join(changed)}; re-run embed and fit-router"
            )
        from .router import reconstruction_errors

        if len(embeddings) == 0:
            return np.zeros((0, len(self.models)))
        return np.stack([reconstruction_errors(model, embeddings) for model in self.models], axis=1)


def load_router(version: Version) -> tuple[Autoencoder, dict]:
    import torch
    from safetensors.torch import load_file

    from .router import Autoencoder

    record = read_json(version.file(FIT_ROUTER.files.router))
    state = load_file(version.file(FIT_ROUTER.files.weights))
    # built on the meta device, a router draws no initial weights: loading one leaves torch's random state as it
    # was, so train-task, which loads them after seeding its experts' draws, draws the same experts as before
    with torch.device("meta"):
        model = Autoencoder(record["dim"], record["config"]["hidden"], record["config"]["output_activation"])
    model.load_state_dict(state, assign=True)
    return model, record


def router_versions(project, tasks: list[str]) -> list[Version]:
    return [project.store.require(FIT_ROUTER.name, t, hint=FIT_ROUTER.hint(t)) for t in tasks]


def load_bank(project, tasks: list[str]) -> RouterBank:
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
