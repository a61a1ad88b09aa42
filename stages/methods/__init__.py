"""The registry of continual methods: one module each under `stages/methods/`, named once below.

Adding a method: write its module (a `ContinualMethod` subclass, see `base.py`, ending with ``METHODS = [...]``)
and add the module's name to `_MODULES`.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import UserError
from .base import JOINT_TASK, ContinualMethod, method_flag, stage_name

# In the order of the paper's Table 2 (D-MoLE last, followed by its ablations, its Table 4).
_MODULES = (
    "zero_shot",
    "finetune",
    "joint",
    "seq_lora",
    "lwf",
    "ewc",
    "olora",
    "moelora",
    "dmole",
    "replay",
    "mr_lora",
    "keeplora",
    "reglora",
    "hide",
)
REGISTRY: dict[str, ContinualMethod] = {
    method.name: method for module in _MODULES for method in import_module(f".{module}", __name__).METHODS
}


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> ContinualMethod:
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["JOINT_TASK", "REGISTRY", "ContinualMethod", "get_method", "method_flag", "method_names", "stage_name"]
