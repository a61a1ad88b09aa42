"""RegLoRA's key elements and its penalty, and its trainer (heavy: torch). The method, and the sources, are
`reglora.py`."""

from __future__ import annotations

import torch
from typing_extensions import override

from .lora_trainer import LoraTrainer

KEYS = "key_elements.safetensors"  # module -> [n, 2] (row, column) of every task's key elements so far


def key_elements(update: torch.Tensor, share: float) -> torch.Tensor:
    """The ``int(share * rows * cols)`` positions of ``update`` (B A) with the largest magnitude, as (row, col)."""
    k = int(share * update.numel())
    flat = torch.topk(update.abs().flatten(), k).indices
    return torch.stack([flat // update.shape[1], flat % update.shape[1]], dim=1)


def key_penalty(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], keys: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over modules of the mean magnitude of the update B A at its key elements, each element (i, j) computed
    alone as B[i] . A[:, j] (the whole product would be a weight-sized matrix per module and step)."""

    def at_keys(a: torch.Tensor, b: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return (b[key[:, 0]] * a[:, key[:, 1]].T).sum(-1)

    return sum(at_keys(*pairs[m], keys[m]).abs().mean() for m in pairs if len(keys.get(m, ())))


class RegLoraTrainer(LoraTrainer):
    """A fresh LoRA on the merged model, penalised at the earlier tasks' key elements (from ``previous``, task
    t-1's artifact); saving it adds its own key elements."""

    def __init__(self, run, adapter, experts, modules, lora, routes, *, previous=None, **kwargs):
        from safetensors.torch import load_file

        super().__init__(run, adapter, experts, modules, lora, routes, **kwargs)
        self.keys = load_file(previous.file(KEYS)) if previous is not None else {}

    def pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module, this task's (A, B); the update is B A, unscaled, as the reference reads it."""
        layers = {m: self.model.get_submodule(f"base_model.model.{m}") for m in self.modules}
        return {m: (layer.lora_A[self.name].weight, layer.lora_B[self.name].weight) for m, layer in layers.items()}

    @override
    def extra_losses(self, model, batch: dict, outputs, before) -> dict:
        if not self.keys:
            return {}
        device = outputs.loss.device
        keys = {m: k.to(device) for m, k in self.keys.items()}
        return {"reg": self.run.hyper.weight * key_penalty(self.pairs(), keys)}

    def save(self, writer) -> None:
        from safetensors.torch import save_file

        super().save(writer)
        with torch.no_grad():
            own = {
                m: key_elements((b @ a).float(), self.run.hyper.key_share).cpu() for m, (a, b) in self.pairs().items()
            }
        save_file({m: torch.cat([k, self.keys[m]]) if m in self.keys else k for m, k in own.items()}, writer.path(KEYS))
