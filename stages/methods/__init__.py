"""The registry of continual methods: one module each under `stages/methods/`, one line each below.

Adding a method: write its module (a `ContinualMethod` subclass, see `base.py`) and add it to `_METHODS`.
"""

from __future__ import annotations

from ..errors import UserError
from .base import JOINT_TASK, ContinualMethod, method_flag, stage_name
from .dmole import DMoLE
from .ewc import EwcLora
from .finetune import Finetune
from .joint import Joint
from .lwf import LwfLora
from .moelora import MoELora
from .olora import OLora
from .seq_lora import SeqLora
from .zero_shot import ZeroShot

# In the order of the paper's Table 2 (D-MoLE last), then D-MoLE's ablations (its Table 4).
_METHODS: list[ContinualMethod] = [
    ZeroShot(), Finetune(), Joint(), SeqLora(), LwfLora(), EwcLora(), OLora(), MoELora(), *DMoLE.with_ablations(),
]
REGISTRY: dict[str, ContinualMethod] = {method.name: method for method in _METHODS}


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> ContinualMethod:
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["JOINT_TASK", "REGISTRY", "ContinualMethod", "get_method", "method_flag", "method_names", "stage_name"]
