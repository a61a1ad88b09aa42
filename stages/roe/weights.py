"""RoE weights on disk: one safetensors file of ``roe.layers.{l}.…`` tensors whose metadata names the base
model it was trained on (spec roe.md §10)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .attach import RoEConfigError
from .modules import RoEModules, RoEShape


def save_roe(
    path: Path,
    modules: RoEModules,
    *,
    family: str,
    base_model: str,
    base_hash: str,
    rho: float,
    base_revision: str = "",
    dmole_checkpoint: str = "",
) -> None:
    shape = modules.shape
    metadata = {
        "family": family,
        "base_model": base_model,
        "base_revision": base_revision,
        "base_hash": base_hash,
        "variant": shape.router_input,
        "rho": str(rho),
        "rank": str(shape.rank),
        "d_model": str(shape.d_model),
        "n_layers": str(shape.n_layers),
        "routable": json.dumps(list(shape.routable)),
        "dmole_checkpoint": dmole_checkpoint,
    }
    save_file({k: v.float().cpu() for k, v in modules.named_tensors().items()}, str(path), metadata=metadata)


def load_roe(path: Path, *, family: str, base_hash: str | None) -> tuple[RoEModules, dict[str, str]]:
    """The saved modules (fp32, on the CPU) and their metadata; a file made for another family or (when
    ``base_hash`` is given) another base model is an error."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118  (safe_open: no __iter__)
    if metadata.get("family") != family:
        raise RoEConfigError(f"{path}: RoE weights for family {metadata.get('family')!r}, the model is {family!r}")
    if base_hash is not None and metadata.get("base_hash") != base_hash:
        raise RoEConfigError(
            f"{path}: RoE weights were trained on a different base model (hash mismatch); run `dmole route-train` again"
        )
    shape = RoEShape(
        int(metadata["d_model"]),
        int(metadata["rank"]),
        int(metadata["n_layers"]),
        tuple(json.loads(metadata["routable"])),
        metadata["variant"],
    )
    modules = RoEModules(shape)
    modules.load_named_tensors(tensors)
    return modules, metadata
