"""Pre-train a tiny base model from scratch, so it starts with some zero-shot skill.

Two phases, as real multimodal LLMs are built on a pre-trained vision encoder: the vision side (encoder and
projector) first learns to classify each scene's attributes from the mean of its image tokens, then it is
frozen while the language side learns to answer the generic instruction mixture. Trained jointly from
scratch instead, the language side learns its answers' words long before it learns to read the image tokens:
after six epochs the base told shapes and positions at chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .data.samples import TrainSample
from .progress import Progress, silent
from .training.chat import answer_loss
from .training.loop import LoopSettings, ParamGroup, train


@dataclass(frozen=True)
class PretrainSettings:
    vision_epochs: float = 20
    epochs: float = 3
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    seed: int = 0

    def loop(self, epochs: float) -> LoopSettings:
        return LoopSettings(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            seed=self.seed,
        )


def _train_only(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Put ``model`` in training mode with only ``params`` requiring gradients; return them."""
    trained = {id(p) for p in params}
    model.train()
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return params


def pretrain_vision(
    adapter,
    images: list[Image.Image],
    labels: dict[str, list[int]],
    settings: PretrainSettings = PretrainSettings(),
    progress: Progress = silent,
) -> list[dict]:
    """Train the vision side of ``adapter.model`` in place: one linear head per attribute reads the mean
    image token (what any language-model position can attend to uniformly). The heads are discarded."""
    model = adapter.model
    language = {id(p) for p in adapter.language_side()}
    vision = _train_only(model, [p for p in model.parameters() if id(p) not in language])
    torch.manual_seed(settings.seed)
    heads = torch.nn.ModuleDict(
        {name: torch.nn.Linear(adapter.d_language, max(classes) + 1) for name, classes in labels.items()}
    ).to(adapter.device)
    targets = {name: torch.tensor(classes, device=adapter.device) for name, classes in labels.items()}
    inputs = [adapter.image_inputs(image) for image in images]

    def loss_fn(prepared, indices, _scope):
        tokens = adapter.image_tokens([inputs[i] for i in indices], prepared)
        pooled = torch.stack([one.mean(dim=0) for one in tokens])
        losses = {
            name: torch.nn.functional.cross_entropy(head(pooled.float()), targets[name][indices])
            for name, head in heads.items()
        }
        return {"loss": sum(losses.values()), **{name: loss.detach() for name, loss in losses.items()}}

    result = train(
        model,
        [ParamGroup("vision", vision), ParamGroup("heads", list(heads.parameters()))],
        loss_fn,
        len(images),
        settings.loop(settings.vision_epochs),
        progress=progress,
        description="pre-train vision",
    )
    model.eval()
    return result.log


def pretrain(
    adapter, samples: list[TrainSample], settings: PretrainSettings = PretrainSettings(), progress: Progress = silent
) -> list[dict]:
    """Train the language side of ``adapter.model`` in place, the vision side frozen; return the per-step log."""
    model = adapter.model
    params = _train_only(model, adapter.language_side())
    result = train(
        model,
        [ParamGroup("language", params)],
        lambda prepared, idx, _scope: {"loss": answer_loss(prepared, adapter, [samples[i] for i in idx])},
        len(samples),
        settings.loop(settings.epochs),
        progress=progress,
        description="pre-train base",
    )
    model.eval()
    return result.log
