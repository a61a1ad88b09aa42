"""D-MoLE experts as standard PEFT LoRA adapters, with per-sample expert sets (spec/dmole.md §7).

Task k's expert is the PEFT adapter named ``task_k`` whose ``target_modules`` are exactly its
allocated modules. For each batch, PEFT activates the union of the experts routed to its samples (so
unused experts cost nothing), and a 0/1 weight per sample, applied in a forward hook on each
adapter's ``lora_B``, decides which of them count for which sample:

    y = W0 x + (alpha / r) * sum_k w_k(sample) * B_k A_k dropout(x)

The weights live in a context variable set around each forward or generate call, never on modules,
so concurrent requests cannot leak into each other. A forward without weights is an error rather
than a silent "all experts on".

An expert may be a DoRA (``LoraSettings.dora``: PEFT's ``use_dora``), whose per-sample weight scales its whole
output, ``(m / ||W + s B A||_c - 1) W x + (m / ||W + s B A||_c) s B A x``, on the layer's own ``W x``: PEFT would
hand a DoRA the running sum of the experts before it, so two routed DoRAs add their outputs as two routed LoRAs do.

Under ``shared_dropout`` (train-task's ``dropout_mask: shared``) the experts of a module share one dropout mask per
forward (`module_dropout`); by default each draws its own, as PEFT and the reference do.

An allocated name may be a group of modules (a ``qkv`` candidate): its expert is one LoRA with a shared A over
the members (`shared_lora`), targeted in PEFT as the members themselves.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .module_dropout import share_dropout
from .shared_lora import tie, tied_width

ADAPTER_PREFIX = "task_"


def adapter_name(task_id: int) -> str:
    return f"{ADAPTER_PREFIX}{task_id}"


@dataclass(frozen=True)
class LoraSettings:
    """One adapter's LoRA shape; each method's hyperparameters hold its defaults (D-MoLE's: `DMoLEHyper.lora`)."""

    rank: int
    alpha: int
    dropout: float
    dora: bool = False  # a DoRA (weight-decomposed LoRA, PEFT's use_dora): a magnitude per output feature too

    @property
    def expert_type(self) -> str:
        return "dora" if self.dora else "lora"

    def config(self, target_modules: Sequence[str], base_model: str = "") -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            bias="none",
            target_modules=sorted(target_modules),
            base_model_name_or_path=base_model or None,
            use_dora=self.dora,
        )


@dataclass(frozen=True)
class _Routing:
    weights: dict[str, torch.Tensor]  # adapter name -> [batch] 0/1 weights
    vision_rows: torch.Tensor | None  # vision activation row -> sample index, when rows != samples


_ROUTING: contextvars.ContextVar[_Routing | None] = contextvars.ContextVar("dmole_expert_routing", default=None)


def _mask_hook(adapter: str, tower: str):
    def hook(_module, _inputs, output):
        routing = _ROUTING.get()
        if routing is None:
            raise RuntimeError("an expert layer ran outside `routed(...)`: the per-sample expert set is unknown")
        weight = routing.weights.get(adapter)
        if weight is None:
            raise RuntimeError(f"expert {adapter} ran without a routing weight")
        rows = output.shape[0]
        if rows != weight.shape[0]:
            if tower != "vision" or routing.vision_rows is None:
                raise RuntimeError(f"{rows} activation rows for {weight.shape[0]} samples in a {tower} expert")
            weight = weight[routing.vision_rows]
        return output * weight.to(output.dtype).view(rows, *([1] * (output.dim() - 1)))

    return hook


def _own_base(_module, args, kwargs):
    """A DoRA expert rescales the layer's ``W x`` alone (PEFT passes the sum so far, earlier experts included;
    without it, PEFT computes ``W x`` itself, as it does under dropout)."""
    return args, {**kwargs, "base_result": None}


class ExpertModel:
    """A base model plus named task experts, with per-sample routing and strict freezing."""

    def __init__(
        self,
        base: torch.nn.Module,
        towers: dict[str, str],
        base_model_id: str = "",
        groups: Mapping[str, Sequence[str]] | None = None,
        shared_dropout: bool = False,
    ):
        """``towers``: module -> tower; ``groups``: group candidate name -> its member modules; ``shared_dropout``:
        one dropout mask per module forward for all its experts."""
        self.base, self.towers, self.base_model_id = base, towers, base_model_id
        self.shared_dropout = shared_dropout
        self.groups = {name: tuple(members) for name, members in (groups or {}).items()}
        self.peft: PeftModel | None = None
        self.training_task: int | None = None  # the one expert that may require grad
        self._hooked: set[str] = set()

    @property
    def model(self) -> torch.nn.Module:
        return self.peft if self.peft is not None else self.base

    @property
    def adapters(self) -> list[str]:
        return sorted(self.peft.peft_config, key=lambda n: int(n.removeprefix(ADAPTER_PREFIX))) if self.peft else []

    def targets(self, modules: Sequence[str]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
        """The modules PEFT targets for the allocated ``modules`` (each group replaced by its members), and the
        groups among them."""
        groups = {m: self.groups[m] for m in modules if m in self.groups}
        return sorted(member for m in modules for member in groups.get(m, (m,))), groups

    def load_expert(self, task_id: int, folder: Path, shared: Mapping[str, Sequence[str]] | None = None) -> None:
        """Load a saved expert; ``shared`` (its sidecar's groups) ties each group's A again."""
        name = adapter_name(task_id)
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, folder, adapter_name=name, is_trainable=False)
        else:
            self.peft.load_adapter(folder, adapter_name=name, is_trainable=False)
        tie(self.peft, name, shared or {}, loaded=True)
        self._activate_all()

    def add_expert(self, task_id: int, modules: Sequence[str], settings: LoraSettings) -> list[torch.nn.Parameter]:
        """Add task ``task_id``'s fresh expert and make it, and only it, trainable."""
        name = adapter_name(task_id)
        targets, groups = self.targets(modules)
        config = settings.config(targets, self.base_model_id)
        if self.peft is None:
            self.peft = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        tie(self.peft, name, groups)
        self._activate_all()
        self.training_task = task_id
        magnitudes = sum(d_out for _, d_out in self._sizes(targets).values()) if settings.dora else 0
        return self.freeze_all_but(task_id, expected=settings.rank * self._width(targets, groups) + magnitudes)

    @contextmanager
    def routed(
        self, routes: Sequence[Sequence[int] | Mapping[int, float]], *, vision_rows: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Run the batch with, per sample, the experts of the task ids in ``routes[i]`` (none: the base), each
        at full strength, or at the weight ``routes[i]`` maps it to."""
        union = sorted({task_id for route in routes for task_id in route})
        active = [adapter_name(task_id) for task_id in union]
        unknown = set(active) - set(self.adapters)
        if unknown:
            raise RuntimeError(f"routed to experts that are not loaded: {sorted(unknown)}")
        device = next(self.model.parameters()).device

        def weight(route, task_id: int) -> float:
            return route.get(task_id, 0.0) if isinstance(route, Mapping) else float(task_id in route)

        # a weight for every loaded expert, zero where not routed: a copy of the model (FSDP2's working copy)
        # keeps every expert active, and each must know it counts for nothing there
        weights = {
            name: torch.tensor(
                [weight(route, int(name.removeprefix(ADAPTER_PREFIX))) for route in routes], device=device
            )
            for name in self.adapters
        }
        # with no expert in training, PEFT activates the experts frozen (it makes them trainable otherwise)
        self.peft.base_model.set_adapter(active, inference_mode=self.training_task is None)
        if self.training_task is not None:
            self.freeze_all_but(self.training_task)
        token = _ROUTING.set(_Routing(weights, vision_rows))
        try:
            yield
        finally:
            _ROUTING.reset(token)

    @contextmanager
    def rows(self, indices: torch.Tensor) -> Iterator[None]:
        """Inside ``routed(...)``: a language-model call on only the batch rows ``indices`` (RoE's gather of a
        layer's executing rows) sees those rows' weights."""
        routing = _ROUTING.get()
        if routing is None:
            raise RuntimeError("rows(...) outside `routed(...)`")
        token = _ROUTING.set(_Routing({name: w[indices.to(w.device)] for name, w in routing.weights.items()}, None))
        try:
            yield
        finally:
            _ROUTING.reset(token)

    def freeze_all_but(self, task_id: int, expected: int | None = None) -> list[torch.nn.Parameter]:
        """PEFT re-enables gradients on every adapter it activates: freeze all but one, then check the count."""
        marker = f".{adapter_name(task_id)}."
        trainable = []
        for name, param in self.model.named_parameters():
            param.requires_grad_(marker in f"{name}.")
            if param.requires_grad:
                trainable.append(param)
        count = sum(p.numel() for p in trainable)
        if expected is not None and count != expected:
            raise RuntimeError(f"{count} trainable parameters, but the allocation gives task {task_id} {expected}")
        return trainable

    def _sizes(self, modules: Sequence[str]) -> dict[str, tuple[int, int]]:
        linears = dict(self.base.named_modules())
        return {m: (linears[m].in_features, linears[m].out_features) for m in modules}

    def _width(self, modules: Sequence[str], groups: Mapping[str, Sequence[str]]) -> int:
        return tied_width(groups, self._sizes(modules))

    def _weighted(self, module_name: str) -> tuple[str, str] | None:
        """``(adapter, target module)`` when ``module_name`` is where an adapter's per-sample weight applies: a
        LoRA's ``lora_B``, a DoRA's magnitude module (its whole output: a DoRA also runs ``lora_B`` on an identity
        to get its weight norm)."""
        parent, _, adapter = module_name.rpartition(".")
        if not adapter.startswith(ADAPTER_PREFIX):
            return None
        container = ".lora_magnitude_vector" if self.peft.peft_config[adapter].use_dora else ".lora_B"
        if not parent.endswith(container):
            return None
        return adapter, parent.removesuffix(container).removeprefix("base_model.model.")

    def _activate_all(self) -> None:
        self.peft.base_model.set_adapter(self.adapters)
        for module_name, module in self.peft.named_modules():
            weighted = self._weighted(module_name)
            if weighted is None or module_name in self._hooked:
                continue
            adapter, target = weighted
            module.register_forward_hook(_mask_hook(adapter, self.towers[target]))
            if self.peft.peft_config[adapter].use_dora:
                module.register_forward_pre_hook(_own_base, with_kwargs=True)
            self._hooked.add(module_name)
        if self.shared_dropout:
            share_dropout(self.peft)
        for param in self.peft.parameters():
            param.requires_grad_(False)
