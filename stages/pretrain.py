"""Pre-train a tiny base model from scratch on a generic mixture, so it starts with some zero-shot skill."""

from __future__ import annotations

from dataclasses import dataclass

from .data.samples import TrainSample
from .progress import Progress, silent
from .training.chat import answer_loss
from .training.loop import LoopSettings, ParamGroup, train


@dataclass(frozen=True)
class PretrainSettings:
    epochs: float = 6
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    seed: int = 0


def pretrain(adapter, samples: list[TrainSample], settings: PretrainSettings = PretrainSettings(),
             progress: Progress = silent) -> list[dict]:
    """Train every parameter of ``adapter.model`` in place; return the per-step log."""
    model = adapter.model
    model.train()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    loop = LoopSettings(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                        weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio, seed=settings.seed)
    result = train(model, [ParamGroup("model", params)],
                   lambda prepared, idx, _scope: {"loss": answer_loss(prepared, adapter, [samples[i] for i in idx])},
                   len(samples), loop, progress=progress, description="pre-train base")
    model.eval()
    return result.log
