"""Model surgery (spec roe.md §2.1, §2.3): which LM layers are routable, and installing RoE on them.

The family adapter names each decoder layer's input norm and gives the layer list and the width; the
attention types come from the text config's ``layer_types``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import UserError
from .layer import RoutedForward, StreamedForward, TokenSource
from .modules import PREFIX, RoEModules, RoEShape, RouterInput
from .plan import RoutingPlan, active
from .segments import ImageTokens, prompt_segments


class RoEConfigError(UserError):
    """An impossible always-execute set or a RoE file that does not fit the model."""


def always_executed(adapter, requested: Iterable[int]) -> list[int]:
    """``requested`` (which must hold layer 0) plus the first layer of each attention type."""
    n_layers = len(adapter.language_layers())
    requested = set(requested)
    if 0 not in requested:
        raise RoEConfigError("always_execute must contain layer 0: transformers reads the cache length from it")
    if bad := sorted(l for l in requested if not 0 <= l < n_layers):
        raise RoEConfigError(f"always_execute names layers {bad}, but the LM has layers 0..{n_layers - 1}")
    types = getattr(adapter.model.config.text_config, "layer_types", None) or ["full_attention"] * n_layers
    return sorted(requested | {types.index(t) for t in set(types)})


def roe_shape(
    adapter, always: Iterable[int], rank: int | None = None, router_input: RouterInput = "pooled"
) -> RoEShape:
    d_model = adapter.d_language
    n_layers = len(adapter.language_layers())
    kept = set(always_executed(adapter, always))
    return RoEShape(
        d_model, rank or d_model // 4, n_layers, tuple(l for l in range(n_layers) if l not in kept), router_input
    )


def _token_source(adapter, modules: RoEModules) -> TokenSource | None:
    """Routing tokens need a mask the attention kernel honours and RoPE's value at position 0."""
    if modules.tokens is None:
        return None
    attention = adapter.model.config._attn_implementation or ""
    if "flash" in attention:
        raise RoEConfigError(
            f"routing tokens need an attention mask that {attention} cannot take; load the model "
            "with sdpa or eager attention, or use router_input: pooled"
        )
    rotary = getattr(adapter.lm_body, "rotary_emb", None)
    if rotary is None:
        raise RoEConfigError(
            f"routing tokens: the {adapter.family} language model has no rotary embedding to "
            "place the slots at position 0; use router_input: pooled"
        )
    return TokenSource(modules.tokens, float(getattr(rotary, "attention_scaling", 1.0)))


@dataclass
class Attachment:
    """Installed RoE: removing it restores every layer's class forward and takes ``roe`` out of the model."""

    modules: RoEModules
    layers: list
    hook: RemovableHandle
    model: nn.Module

    def remove(self) -> None:
        for layer in self.layers:
            del layer.forward
        self.hook.remove()
        delattr(self.model, PREFIX)


def attach(adapter, modules: RoEModules) -> Attachment:
    """Route the LM layers of ``adapter.model`` through ``modules`` (moved to the model's device, kept in
    fp32). The modules are registered in the model as its ``roe`` sub-module, as PEFT registers adapters, so
    data parallelism (DDP, FSDP) sees their parameters and averages their gradients; the backbone's parameter
    names and classes stay as they are."""
    shape = modules.shape
    layers = adapter.language_layers()
    if len(layers) != shape.n_layers or adapter.d_language != shape.d_model:
        raise RoEConfigError(
            f"RoE weights are for {shape.n_layers} layers of width {shape.d_model}; the model has "
            f"{len(layers)} of width {adapter.d_language}"
        )
    kept = set(always_executed(adapter, [0])) & set(shape.routable)
    if kept:
        raise RoEConfigError(f"RoE weights route layers {sorted(kept)}, which must always execute")
    if hasattr(adapter.model, PREFIX):
        raise RoEConfigError("the model already has RoE attached")
    modules.to(adapter.device)
    adapter.model.add_module(PREFIX, modules)
    source = _token_source(adapter, modules)
    norm = adapter.lm_input_norm
    routed = []
    for index, layer in enumerate(layers):
        if index in shape.routable:
            layer.forward = RoutedForward(
                index, modules.layers[str(index)], getattr(layer, norm), layer.forward, source
            )
        elif source is not None:
            layer.forward = StreamedForward(index, source, layer.forward)
        else:
            continue
        routed.append(layer)
    images = ImageTokens.of(adapter)

    def read_prompt(_module, _args, kwargs):
        plan = active()
        if isinstance(plan, RoutingPlan) and plan.segments is None and kwargs.get("input_ids") is not None:
            ids = kwargs["input_ids"]
            mask = kwargs.get("attention_mask")
            plan.segments = prompt_segments(ids, mask if mask is not None else ids.new_ones(ids.shape), images)

    hook = adapter.model.register_forward_pre_hook(read_prompt, with_kwargs=True)
    return Attachment(modules, routed, hook, adapter.model)
