"""RegLoRA's key elements and its penalty, and its trainer (heavy: torch). The method, and the sources, are
`reglora.py`."""

from __future__ import annotations

import torch

from .lora import LoraTrainer

KEYS = "key_elements.safetensors"  # module -> [n, 2] (row, column) of every task's key elements so far


def key_elements(update: torch.Tensor, share: float) -> torch.Tensor:
    """The ``int(share * rows * cols)`` positions of ``update`` (B A) with the largest magnitude, as (row, col)."""
    k = int(share * update.numel())
    flat = torch.topk(update.abs().flatten(), k).indices
    return torch.stack([flat // update.shape[1], flat % update.shape[1]], dim=1)


def key_penalty(updates: dict[str, torch.Tensor], keys: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over modules of the mean magnitude of the update at its key elements."""
    return sum(updates[m][keys[m][:, 0], keys[m][:, 1]].abs().mean() for m in updates if len(keys.get(m, ())))


class RegLoraTrainer(LoraTrainer):
    """A fresh LoRA on the merged model, penalised at the earlier tasks' key elements (from ``previous``, task
    t-1's artifact); saving it adds its own key elements."""

    def __init__(self, run, adapter, experts, modules, lora, routes, *, previous=None, **kwargs):
        from safetensors.torch import load_file

        super().__init__(run, adapter, experts, modules, lora, routes, **kwargs)
        self.keys = load_file(previous.file(KEYS)) if previous is not None else {}

    def updates(self) -> dict[str, torch.Tensor]:
        """Per module, this task's B A (unscaled, as the reference reads it)."""
        layers = {m: self.model.get_submodule(f"base_model.model.{m}") for m in self.modules}
        return {m: layer.lora_B[self.name].weight @ layer.lora_A[self.name].weight for m, layer in layers.items()}

    def extra_losses(self, model, batch: dict, outputs, before) -> dict:
        if not self.keys:
            return {}
        device = outputs.loss.device
        keys = {m: k.to(device) for m, k in self.keys.items()}
        return {"reg": self.run.hyper.weight * key_penalty(self.updates(), keys)}

    def save(self, writer) -> None:
        from safetensors.torch import save_file

        super().save(writer)
        with torch.no_grad():
            own = {m: key_elements(u.float(), self.run.hyper.key_share).cpu() for m, u in self.updates().items()}
        save_file({m: torch.cat([k, self.keys[m]]) if m in self.keys else k for m, k in own.items()},
                  writer.path(KEYS))
