"""MoELoRA's layer (heavy: torch): several LoRA experts on one linear projection, mixed per token by a learned
router, and its trainer. The method itself is `moelora.py`."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from dmole.artifacts.io import read_json, write_json

from ..dmole.experts import LoraSettings
from ..errors import UserError
from .base import Trainer, TrainRun
from .lora import Shape, baseline_shape

WEIGHTS, CONFIG = "moelora.safetensors", "moelora.json"


class MoELoraLinear(nn.Module):
    """y = W x + (alpha / r) * sum_e g_e(x) B_e A_e dropout_e(x), g = softmax(router(x)) per token, each expert
    with its own dropout mask (CoIN's coinmoelora.py ``CoINMOELoraLinear.forward``).

    The total rank r is split evenly among the experts (rank r / experts each) and the scale uses the total r,
    as CoIN's coinmoelora.py does; A ~ N(0, 0.01^2), B = 0, so training starts from the wrapped layer.
    """

    def __init__(self, base: nn.Linear, experts: int, rank: int, alpha: float, dropout: float):
        super().__init__()
        if rank % experts:
            raise ValueError(f"MoELoRA splits its rank among the experts: rank {rank} is not a multiple of {experts}")
        self.base = base
        per_expert = rank // experts
        self.router = nn.Linear(base.in_features, experts, bias=False)
        self.lora_A = nn.Parameter(torch.randn(experts, per_expert, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(experts, base.out_features, per_expert))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.router(x.to(self.router.weight.dtype)), dim=-1)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e``'s LoRA on its own dropout draw of ``x`` (CoIN calls its dropout inside the expert loop)."""
        return self.dropout(x).to(self.lora_A.dtype) @ self.lora_A[e].T @ self.lora_B[e].T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        gates = self.gates(x)
        delta = sum(gates[..., e : e + 1] * self.expert(e, x) for e in range(len(self.lora_A)))
        return out + (self.scaling * delta).to(out.dtype)


def inject(model: nn.Module, modules: list[str], experts: int, lora: LoraSettings) -> list[nn.Parameter]:
    """Wrap each named linear projection of ``model`` in a `MoELoraLinear`; return the new parameters."""
    params = []
    named = dict(model.named_modules())
    device = next(model.parameters()).device
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        layer = MoELoraLinear(named[name], experts, lora.rank, lora.alpha, lora.dropout).to(device)
        setattr(named[parent_name] if parent_name else model, child, layer)
        params += [layer.router.weight, layer.lora_A, layer.lora_B]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def moe_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".router." in k or ".lora_A" in k or ".lora_B" in k}


def load_moelora(model: nn.Module, folder_version) -> nn.Module:
    """The workspace model with a trained MoELoRA (a train-task artifact of the method) injected and loaded."""
    from safetensors.torch import load_file

    config = read_json(folder_version.file(CONFIG))
    inject(model, config["modules"], config["hyper"]["experts"], LoraSettings(**config["lora"]))
    state = load_file(folder_version.file(WEIGHTS))
    missing = set(moe_state(model)) - set(state)
    if missing:
        raise RuntimeError(f"{folder_version} lacks MoELoRA weights for {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class MoELoraTrainer(Trainer):
    """Trains the MoELoRA injected into the workspace model, continued from task t-1's when there is one (its
    modules and rank too, under parity chosen at the first task like every continued LoRA's)."""

    def __init__(self, run: TrainRun, adapter, modules: list[str], previous=None):
        if run.options.expert_type == "dora":
            raise UserError("moelora trains its own mixture of LoRA experts, not PEFT adapters: it has no DoRA form")
        self.run, self.adapter = run, adapter
        self.model = adapter.model
        if previous is not None:
            config = read_json(previous.file(CONFIG))
            if config["hyper"] != run.hyper.model_dump():
                raise UserError(f"moelora continues one MoELoRA, but {previous} was trained with {config['hyper']}")
            load_moelora(self.model, previous)
            self.shape = Shape(LoraSettings(**config["lora"]), config["modules"], config["budget"])
        else:
            experts = run.hyper.experts
            shape = baseline_shape(run, adapter, modules, step=experts, overhead=lambda d_in: experts * d_in)
            self.shape = Shape(shape.lora, sorted(shape.modules), shape.budget)
            inject(self.model, self.shape.modules, experts, self.shape.lora)
        self.params = [p for k, p in self.model.named_parameters() if k in moe_state(self.model)]
        for p in self.params:
            p.requires_grad_(True)

    def summary(self) -> dict:
        return self.shape.summary()

    def save(self, writer) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in moe_state(self.model).items()}, writer.path(WEIGHTS))
        write_json(
            writer.path(CONFIG),
            {
                "task": self.run.task,
                "task_id": self.run.task_id,
                "method": self.run.method,
                "modules": self.shape.modules,
                "hyper": self.run.hyper.model_dump(),
                "lora": asdict(self.shape.lora),
                "budget": self.shape.budget,
            },
        )
