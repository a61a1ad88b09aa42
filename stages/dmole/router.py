"""Per-task autoencoder routers (spec/dmole.md §4): architecture, training, threshold and errors.

Routers always run in fp32 on L2-normalised sequence embeddings, at fit time and at inference, so a
threshold is always compared with errors computed the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..options import FitRouterOptions
from ..progress import Progress, silent
from ..threads import one_thread

QUANTILE_TABLE = (
    ("min", 0.0),
    ("q10", 0.10),
    ("q25", 0.25),
    ("q50", 0.50),
    ("q75", 0.75),
    ("q90", 0.90),
    ("q95", 0.95),
    ("q99", 0.99),
    ("max", 1.0),
)


COSINE_PERIOD = 1000  # epochs of the learning rate's cosine annealing (FitRouterOptions.min_lr)


class Autoencoder(nn.Module):
    def __init__(self, dim: int, hidden: int = 128, output_activation: str = "sigmoid"):
        super().__init__()
        if output_activation not in ("sigmoid", "none"):
            raise ValueError(f"output_activation must be 'sigmoid' or 'none', not {output_activation!r}")
        self.encoder = nn.Linear(dim, hidden)
        self.decoder = nn.Linear(hidden, dim)
        self.output_activation = output_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(torch.relu(self.encoder(x)))
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out


def normalise(embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def reconstruction_errors(model: Autoencoder, embeddings: np.ndarray | torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """e(x) = mean over dimensions of the squared reconstruction error of the normalised embedding."""
    model.eval()
    x = normalise(embeddings)
    parts = [((model(part) - part) ** 2).mean(dim=1) for part in x.split(chunk)]
    return torch.cat(parts).numpy().astype(np.float64)


@dataclass
class FittedRouter:
    model: Autoencoder
    threshold: float
    epochs: int
    final_loss: float
    quantiles: dict[str, float]


def quantile_table(errors: np.ndarray) -> dict[str, float]:
    table = {name: float(np.quantile(errors, q)) for name, q in QUANTILE_TABLE}
    table["mean"], table["std"] = float(errors.mean()), float(errors.std())
    return table


@contextmanager
def flat_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Inside the block the module's parameters and gradients are views into one flat parameter and its gradient.

    Adam's update is elementwise, so stepping the flat parameter gives every weight, bit for bit, the update it
    gets stepped on its own, in one tensor operation instead of one per parameter: a router's step is small
    enough that those per-tensor calls were a fifth of its fit. Gradients are written into the views in place
    (`step_gradients`; a backward accumulates into them, so zero ``flat.grad`` in place before one: the
    optimizer's ``zero_grad`` costs more than the zeroing itself here). On exit every parameter gets its own
    storage again."""
    params = list(module.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        p.data = flat.data[offset : offset + p.numel()].view_as(p)
        p.grad = flat.grad[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    try:
        yield flat
    finally:
        for p in params:
            p.data, p.grad = p.data.clone(), None


_MEAN = 1  # torch's Reduction::Mean, as mse_loss_backward takes it
_SUBNORMAL = 1e-40  # below float32's smallest normal number, 1.18e-38


def flushing_subnormals() -> bool:
    """Whether this thread's CPU now flushes subnormal floats to zero (torch sets the mode but cannot read it)."""
    return torch.tensor(_SUBNORMAL).mul(1.0).item() == 0.0


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Inside the block this thread's CPU flushes subnormal floats to zero; the mode it had is restored on exit.

    A router's hidden units that never fire get zero gradients, and Adam multiplies their first moment by β1 = 0.9
    at every step: after some 800 steps it is subnormal, and every operation on it takes the CPU's slow path, a
    fifth of a demo router's fit. Flushed, it is zero instead. Either way it moves its weight by less than 1e-31
    (lr · m / ε, with m < 1.2e-38 and ε = 1e-8), which changes a float32 weight only if the weight is below 1e-23
    itself, so the fit ends where it ends without flushing, bit for bit."""
    before = flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


_ONE = torch.ones((), dtype=torch.float32)  # mse_loss_backward's incoming gradient: the loss is the output


@torch.no_grad()
def step_gradients(model: Autoencoder, batch: torch.Tensor) -> torch.Tensor:
    """The batch's MSE reconstruction loss, with every parameter's gradient written into its ``.grad``.

    These are the kernels autograd's backward runs for this graph (mse_loss_backward, sigmoid_backward,
    threshold_backward for the ReLU, addmm's gradients as ``mm_mat1_backward``/``mm_mat2_backward`` form them),
    called directly: bit for bit what ``loss.backward()`` gives, without the graph's bookkeeping, which at a
    router's size was a fifth of each step. Gradients are overwritten in place, not accumulated."""
    encoder, decoder = model.encoder, model.decoder
    hidden = torch.relu(nn.functional.linear(batch, encoder.weight, encoder.bias))
    out = nn.functional.linear(hidden, decoder.weight, decoder.bias)
    if model.output_activation == "sigmoid":
        out = torch.sigmoid(out)
    loss = nn.functional.mse_loss(out, batch)
    grad = torch.ops.aten.mse_loss_backward(_ONE, out, batch, _MEAN)
    if model.output_activation == "sigmoid":
        grad = torch.ops.aten.sigmoid_backward(grad, out)
    torch.mm(grad.t(), hidden, out=decoder.weight.grad)
    torch.sum(grad, 0, out=decoder.bias.grad)
    grad = torch.ops.aten.threshold_backward(grad.mm(decoder.weight), hidden, 0)
    torch.mm(grad.t(), batch, out=encoder.weight.grad)
    torch.sum(grad, 0, out=encoder.bias.grad)
    return loss


class AdamStep(Protocol):
    def step(self, lr: float) -> None: ...


class SingleTensorAdam:
    """torch.optim.Adam's update with its defaults (betas 0.9 and 0.999, eps 1e-8, no weight decay) on one
    parameter: the kernels of torch's single-tensor implementation, the CPU's default, in its order and with its
    scalars, so every step is bit for bit torch's (tested). What it leaves out is the optimizer's per-step
    bookkeeping (hooks, profiler records, the scheduler's wrapper) and a fresh square-root tensor at every step,
    which together cost a router's fit a quarter of its time (docs/benchmarks.md). The learning rate is passed to
    each step; the gradient is read from ``param.grad`` in place, so it must exist before (`flat_parameters`
    allocates it)."""

    def __init__(self, param: nn.Parameter, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.grad = param.data, param.grad
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.param), torch.zeros_like(self.param)
        self.denom = torch.empty_like(self.param)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = 0

    def step(self, lr: float) -> None:
        self.steps += 1
        beta1, beta2, step = self.beta1, self.beta2, float(self.steps)
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_((1 - beta2**step) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, self.denom, value=-step_size)


def cosine_annealing(lr: float, min_lr: float, period: int) -> Iterator[float]:
    """The learning rate of each epoch from the first, as torch's CosineAnnealingLR steps it: its recursive form,
    in its floating-point order, which the closed form does not reproduce bit for bit (tested)."""
    current, epoch = lr, 0
    while True:
        yield current
        epoch += 1
        if (epoch - 1 - period) % (2 * period) == 0:
            current = current + (lr - min_lr) * (1 - math.cos(math.pi / period)) / 2
        else:
            current = (1 + math.cos(math.pi * epoch / period)) / (1 + math.cos(math.pi * (epoch - 1) / period)) * (
                current - min_lr
            ) + min_lr


@one_thread()
@subnormals_flushed()
def fit_router(
    embeddings: np.ndarray,
    settings: FitRouterOptions = FitRouterOptions(),
    progress: Progress = silent,
    description: str = "autoencoder",
    adam: Callable[[nn.Parameter], AdamStep] = SingleTensorAdam,
) -> FittedRouter:
    """Train on one task's embeddings; stop after ``patience`` epochs without a new best epoch-mean loss.
    ``adam`` builds the optimizer of the flat parameter (another implementation, for benchmarks)."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    x = normalise(embeddings)
    model = Autoencoder(x.shape[1], settings.hidden, settings.output_activation)
    model.train()
    with flat_parameters(model) as flat:
        optimizer = adam(flat)
        learning_rates = cosine_annealing(settings.lr, settings.min_lr, COSINE_PERIOD)
        best, since_best, epoch, epoch_loss = math.inf, 0, 0, math.inf
        with progress(description, total=settings.max_epochs) as bar:
            for epoch in range(1, settings.max_epochs + 1):  # noqa: B007  (read after the loop: the epochs run)
                lr = next(learning_rates)
                order = torch.randperm(len(x), generator=generator)
                total = 0.0
                for index in order.split(settings.batch_size):
                    loss = step_gradients(model, x.index_select(0, index))
                    optimizer.step(lr)
                    total += loss.item() * len(index)
                epoch_loss = total / len(x)
                bar.advance(1, loss=epoch_loss)
                if epoch_loss < best:
                    best, since_best = epoch_loss, 0
                else:
                    since_best += 1
                    if since_best >= settings.patience:
                        break
    errors = reconstruction_errors(model, x)
    return FittedRouter(
        model=model,
        threshold=float(np.quantile(errors, settings.quantile)),
        epochs=epoch,
        final_loss=epoch_loss,
        quantiles=quantile_table(errors),
    )
