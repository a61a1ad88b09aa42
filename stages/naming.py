"""Method names and where each method's artifacts live (no torch, so light stages and the CLI can use it)."""

from __future__ import annotations

from typing import get_args

from .config import DMOLE_VARIANTS, Method
from .errors import UserError

METHODS: tuple[str, ...] = get_args(Method)


def is_dmole(method: str) -> bool:
    """D-MoLE or one of its ablations: routed task experts allocated per task."""
    return method == "dmole" or method in DMOLE_VARIANTS


def allocation_rule(method: str) -> str:
    """The allocation rule of D-MoLE (``dmole``) or of one of its ablations (``dmole-<rule>``)."""
    return method.removeprefix("dmole-") if method in DMOLE_VARIANTS else "dmole"


def stage_name(stage: str, method: str) -> str:
    """Artifacts of the baselines and ablations live beside D-MoLE's under a method prefix:
    ``seq-lora.train-task``, ``dmole-uniform.allocate``."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return stage if method == "dmole" else f"{method}.{stage}"


def method_flag(method: str) -> str:
    """What a hint adds to a command line for ``method`` (nothing for the default, dmole)."""
    return "" if method == "dmole" else f" --method {method}"
