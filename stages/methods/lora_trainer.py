"""The trainer of one LoRA adapter inside `ExpertModel` (stages/dmole/experts.py), which most methods train, and the
PEFT folder it saves. A method changes what it does by overriding its hooks: `batch_routes` (each sample's experts
in a batch), `before` and `extra_losses` (the `Trainer` loss hooks) and `record` (what the method keeps beside the
adapter). Light, so that a method's module can subclass it: torch and PEFT come with the objects it is handed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dmole.artifacts.io import read_json, write_json

from ..registry import TRAIN_TASK
from .base import Trainer, TrainRun

if TYPE_CHECKING:
    import torch

    from dmole.artifacts import Version

    from ..dmole.experts import ExpertModel, LoraSettings
    from .lora import Shape

SIDECAR = "dmole_expert.json"


def save_expert(model, name: str, folder: Path, sidecar: dict) -> None:
    """Save one adapter as a standalone PEFT folder: adapter_model.safetensors + adapter_config.json + sidecar.

    PEFT shortens long ``target_modules`` lists to unique suffixes when it injects an adapter; the saved
    config gets the exact sorted full names back, which PEFT matches as exact keys.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[name])
        saved = Path(tmp) / name
        config = read_json(saved / "adapter_config.json")
        config["target_modules"] = sidecar["target_modules"]
        write_json(saved / "adapter_config.json", config)
        for file in saved.iterdir():
            shutil.copy2(file, folder / file.name)
    write_json(folder / SIDECAR, sidecar)


def _adapter_name(task_id: int) -> str:
    from ..dmole.experts import adapter_name

    return adapter_name(task_id)


class LoraTrainer(Trainer):
    """Trains adapter ``run.task_id`` (added on ``modules``) inside ``experts``, each sample routed to ``routes[i]``;
    saved as a PEFT folder named ``folder`` in the artifact."""

    folder = TRAIN_TASK.files.expert

    def __init__(
        self,
        run: TrainRun,
        adapter,
        experts: ExpertModel,
        modules: Sequence[str],
        lora: LoraSettings,
        routes: Sequence,
        *,
        expected: int | None = None,
        previous: Version | None = None,
        sidecar: Mapping | None = None,
        summary: Mapping | None = None,
    ):
        """``previous`` is the artifact a continued LoRA starts from (None: a fresh adapter); ``sidecar`` adds
        fields to the adapter's sidecar, ``summary`` to the artifact's summary."""
        self.run, self.adapter, self.experts, self.lora, self.previous = run, adapter, experts, lora, previous
        self.extra_sidecar, self.extra_summary = dict(sidecar or {}), dict(summary or {})
        self.modules, self.shared = experts.targets(modules)  # PEFT's target modules, and the shared-A groups
        self.params = experts.add_expert(run.task_id, sorted(modules), lora)
        if expected is not None and sum(p.numel() for p in self.params) != expected:
            raise RuntimeError("trainable parameters differ from the allocation's expert size")
        self.routes = list(routes)
        self.model = experts.model

    @classmethod
    def shaped(
        cls, run: TrainRun, adapter, experts: ExpertModel, shape: Shape, routes: Sequence, **given
    ) -> LoraTrainer:
        return cls(
            run,
            adapter,
            experts,
            shape.modules,
            shape.lora,
            routes,
            sidecar=shape.summary(),
            summary=shape.summary(),
            **given,
        )

    @property
    def name(self) -> str:
        return _adapter_name(self.run.task_id)

    def summary(self) -> dict:
        return dict(self.extra_summary)

    def batch_routes(self, indices: list[int]) -> list:
        """The expert sets of a batch's samples (by default each sample's own route)."""
        return [self.routes[i] for i in indices]

    def route(self, indices: list[int], batch: dict):
        return self.routed(self.batch_routes(indices), batch)

    def adapter_params(self, task_id: int) -> dict[str, torch.nn.Parameter]:
        """Adapter ``task_id``'s parameters, keyed by their name with the adapter's name taken out."""
        marker = f".{_adapter_name(task_id)}."
        return {name.replace(marker, "."): p for name, p in self.model.named_parameters() if marker in name}

    def routed(self, routes: Sequence, batch: dict):
        return self.experts.routed(routes, vision_rows=self.adapter.vision_row_samples(batch))

    def record(self, writer) -> None:
        """Write what the method keeps beside the adapter (nothing by default)."""

    def save(self, writer) -> None:
        sidecar = {
            "task": self.run.task,
            "task_id": self.run.task_id,
            "method": self.run.method,
            "adapter_name": self.name,
            "rank": self.lora.rank,
            "alpha": self.lora.alpha,
            "dropout": self.lora.dropout,
            "expert_type": self.lora.expert_type,
            "target_modules": self.modules,
            **({"shared_a": self.shared} if self.shared else {}),
            **self.extra_sidecar,
        }
        save_expert(self.model, self.name, writer.path(self.folder), sidecar)
        self.record(writer)
