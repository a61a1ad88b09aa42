"""What stage 2 tunes besides RoE (spec roe.md §5.2, ``stage2_mode``), and how it is saved and restored:

- ``full``: the LLM and the projector, saved as one safetensors file of those tensors;
- ``lora``: LoRA (r 16, α 32) on the LM's attention and MLP projections, saved as a PEFT adapter folder, plus the
  projector, saved like ``full``'s file;
- ``frozen``: nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

LORA = re.compile(r".*\.lora_[AB]\..*")
BACKBONE, LORA_FOLDER = "backbone.safetensors", "backbone_lora"
PEFT_PREFIX = "base_model.model."  # how PEFT names a wrapped model's tensors on disk


def tuned(mode: str) -> bool:
    return mode != "frozen"


def llm_parameters(adapter) -> list[tuple[str, torch.nn.Parameter]]:
    """The LM's own parameters (body and head, from the family's declaration), LoRA's excluded."""
    return [(n, p) for n, p in adapter.named_language_side() if not LORA.fullmatch(n)]


def projector_parameters(adapter) -> list[tuple[str, torch.nn.Parameter]]:
    """The projector's parameters, from the family's declaration (``projector_paths``). The vision tower, outside
    both, is always frozen."""
    return adapter.named_projector()


def lora_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if LORA.fullmatch(n)]


def add_lora(adapter, rank: int, alpha: int) -> LoraConfig:
    """Inject a LoRA adapter on every attention and MLP projection of the LM, in place (no wrapper, so the
    backbone's own parameter names are unchanged); returns its config."""
    targets = [c.name for c in adapter.candidates(include_mlp=True) if c.tower == "language"]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
    inject_adapter_in_model(config, adapter.model)
    return config


def tuned_tensors(adapter, mode: str) -> dict[str, torch.Tensor]:
    """The stage-2 tensors saved in ``backbone.safetensors``: LLM and projector (full), the projector (lora)."""
    named = (llm_parameters(adapter) if mode == "full" else []) + projector_parameters(adapter)
    return {n: p.detach().contiguous() for n, p in named}


def save_stage2(path: Callable[[str], Path], adapter, mode: str, lora: LoraConfig | None) -> None:
    """Write the stage-2 tensors through ``path`` (a version writer's: name -> where to write it)."""
    save_file(tuned_tensors(adapter, mode), str(path(BACKBONE)))
    if mode == "lora":
        state = get_peft_model_state_dict(adapter.model)
        save_file(
            {PEFT_PREFIX + k: v.detach().contiguous() for k, v in state.items()},
            str(path(f"{LORA_FOLDER}/adapter_model.safetensors")),
        )
        lora.save_pretrained(str(path(f"{LORA_FOLDER}/adapter_config.json").parent))


def load_stage2(file: Callable[[str], Path], adapter, mode: str) -> LoraConfig | None:
    """Restore what ``save_stage2`` wrote into a freshly loaded base model; ``file`` is a version's checked
    reader (name -> path). Returns the LoRA config (``lora`` mode)."""
    config = None
    if mode == "lora":
        config = LoraConfig.from_pretrained(str(file(f"{LORA_FOLDER}/adapter_config.json").parent))
        inject_adapter_in_model(config, adapter.model)
        state = load_file(str(file(f"{LORA_FOLDER}/adapter_model.safetensors")))
        result = set_peft_model_state_dict(adapter.model, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()})
        if result.unexpected_keys:
            raise RuntimeError(f"LoRA tensors that fit no module: {result.unexpected_keys[:3]}")
    with torch.no_grad():
        unexpected = adapter.model.load_state_dict(load_file(str(file(BACKBONE))), strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"backbone tensors that fit no parameter: {unexpected[:3]}")
    adapter.model.to(adapter.device)
    return config
