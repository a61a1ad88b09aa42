"""KeepLoRA's subspace algebra and its trainer (heavy: torch). The method is `keeplora.py`, whose docstring gives the
reference's steps and sources."""

from __future__ import annotations

import torch

from .lora_trainer import LoraTrainer

SUBSPACE = "subspace.safetensors"  # module -> M, its principal subspace after the task: [k, d_in], orthonormal rows


def weight_subspace(weight: torch.Tensor, energy: float) -> torch.Tensor:
    """M before the first task (``extract_weights.py``): the left singular vectors of W^T (``weight``: d_out x d_in)
    whose cumulative energy share stays below ``energy``, at least one."""
    u, s, _ = torch.linalg.svd(weight.T.float(), full_matrices=False)
    share = torch.cumsum(s**2, 0) / (s**2).sum()
    return u[:, : max(int((share < energy).sum()), 1)].T.contiguous()


def residual(gradient: torch.Tensor, subspace: torch.Tensor) -> torch.Tensor:
    """(I - M^T M) G^T: the gradient's input-space part outside the principal subspace, d_in x d_out."""
    g = gradient.T.float()
    return g - subspace.T @ (subspace @ g)


def residual_basis(gradient: torch.Tensor, subspace: torch.Tensor, rank: int) -> torch.Tensor:
    """A (rank x d_in): the top ``rank`` left singular vectors of the residual."""
    u, _, _ = torch.linalg.svd(residual(gradient, subspace), full_matrices=False)
    if u.shape[1] < rank:
        raise ValueError(f"a rank-{rank} KeepLoRA needs modules of at least {rank} inputs and outputs")
    return u[:, :rank].T.contiguous()


def extend_subspace(gradient: torch.Tensor, subspace: torch.Tensor, energy: float) -> torch.Tensor:
    """M after a task (``merge_gradient_chunks``, ``energy`` mode): M's share of G's energy, plus the residual's
    leading directions one at a time while the share is below ``energy``; at most d_in rows."""
    total = (torch.linalg.svdvals(gradient.float()) ** 2).sum()
    u, s, _ = torch.linalg.svd(residual(gradient, subspace), full_matrices=False)
    held = (total - (s**2).sum()) / total
    added = 0
    for value in s:
        if held >= energy:
            break
        held, added = held + value**2 / total, added + 1
    return torch.cat([subspace, u[:, :added].T])[: subspace.shape[1]].contiguous()


def evenly_spaced(count: int, ratio: float) -> list[int]:
    """``int(count * ratio)`` sample indices spread from the first to the last (the reference's ``linspace``), at
    least one (the reference would take none from a task of fewer than 1 / ratio samples)."""
    return torch.linspace(0, count - 1, max(1, int(count * ratio))).long().tolist()


class KeepLoraTrainer(LoraTrainer):
    """A fresh LoRA on the merged model whose A is the residual basis of task t's gradient (frozen: only B trains);
    saving it also saves M grown by the trained model's gradient. ``previous``: task t-1's artifact (its M), None at
    the first task (M from the pre-trained weights)."""

    def __init__(self, run, adapter, experts, modules, lora, routes, *, previous=None, **kwargs):
        from safetensors.torch import load_file

        super().__init__(run, adapter, experts, modules, lora, routes, **kwargs)
        hyper = run.hyper
        self.subspace = (
            load_file(previous.file(SUBSPACE))
            if previous is not None
            else {
                m: weight_subspace(self.layer(m).get_base_layer().weight.detach(), hyper.weight_energy)
                for m in self.modules
            }
        )
        gradients = self.mean_gradients()
        with torch.no_grad():
            for m in self.modules:
                weight = self.layer(m).lora_A[self.name].weight
                weight.copy_(residual_basis(gradients[m], self.subspace[m].to(weight.device), lora.rank))
        self.params = [p for name, p in self.adapter_params(run.task_id).items() if ".lora_A." not in name]

    def layer(self, module: str) -> torch.nn.Module:
        return self.model.get_submodule(f"base_model.model.{module}")

    def mean_gradients(self) -> dict[str, torch.Tensor]:
        """Per module, the mean over ``gradient_ratio`` of the task's samples, one at a time, of the loss gradient
        with respect to its weight (the base's: the merged model's gradient), without dropout."""
        own = len(self.run.samples) - sum(len(buffer) for buffer in self.run.replayed.values())
        indices = evenly_spaced(own, self.run.hyper.gradient_ratio)
        weights = {m: self.layer(m).get_base_layer().weight for m in self.modules}
        sums = {m: torch.zeros_like(w, dtype=torch.float32) for m, w in weights.items()}
        training = self.model.training
        self.model.eval()
        try:
            for i in indices:
                batch = self.adapter.on_device(self.inputs([i]))
                with self.route([i], batch):
                    for w in weights.values():  # after routing, which sets only the adapter trainable
                        w.requires_grad_(True)
                    self.model(**batch).loss.backward()
                for m, w in weights.items():
                    sums[m] += w.grad.float()
                    w.grad = None
                    w.requires_grad_(False)
        finally:
            self.model.train(training)
        self.model.zero_grad(set_to_none=True)
        return {m: total / len(indices) for m, total in sums.items()}

    def save(self, writer) -> None:
        from safetensors.torch import save_file

        super().save(writer)
        gradients = self.mean_gradients()
        self.subspace = {
            m: extend_subspace(gradients[m], self.subspace[m].to(gradients[m].device), self.run.hyper.energy).cpu()
            for m in self.modules
        }
        save_file(self.subspace, writer.path(SUBSPACE))

    def summary(self) -> dict:
        """After `save`: the rows of every module's M after the task."""
        return {**super().summary(), "subspace_rows": sum(len(m) for m in self.subspace.values())}
