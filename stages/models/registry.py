"""Family lookup, folder checks and loading from a local Hugging Face folder."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import torch

from ..device import default_device, default_dtype
from ..threads import set_threads
from .base import FamilyAdapter, ModelFamilyError
from .catalog import ADAPTERS, MODEL_TYPES
from .processor import load_processor

REMOTE_CODE_TYPES = {"internvl_chat": "an InternVL2 / InternVL2.5 remote-code folder: run `dmole convert` on it first"}


def family_adapter(family: str) -> type[FamilyAdapter]:
    """The adapter class of a family of the catalog, importing that family's module alone."""
    module, name = ADAPTERS[family].rsplit(".", 1)
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def supported() -> str:
    return ", ".join(f"{name} ({'/'.join(types)})" for name, types in MODEL_TYPES.items())


def detect_family(path: Path) -> type[FamilyAdapter]:
    """The adapter class for the folder's config.json `model_type`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ModelFamilyError(
            f"{path}: no config.json (a local Hugging Face folder is expected); supported families: {supported()}"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as error:
        raise ModelFamilyError(f"{config}: unreadable ({error})") from None
    if model_type in REMOTE_CODE_TYPES:
        raise ModelFamilyError(f"{path}: {REMOTE_CODE_TYPES[model_type]}")
    for family, types in MODEL_TYPES.items():
        if model_type in types:
            return family_adapter(family)
    raise ModelFamilyError(f"{path}: model_type {model_type!r} is not supported; supported families: {supported()}")


def load_folder_processor(path: Path, adapter: type[FamilyAdapter]):
    """The folder's processor, with a one-line error when it cannot be loaded or has no chat template."""
    try:
        processor = load_processor(path, adapter.processor_class)
    except (OSError, ValueError, TypeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFamilyError(f"{path}: the {adapter.family} processor does not load ({first})") from None
    if not processor.chat_template:
        raise ModelFamilyError(
            f"{path}: no chat template (looked in chat_template.jinja, chat_template.json and tokenizer_config.json)"
        )
    return processor


def check_folder(path: Path) -> type[FamilyAdapter]:
    """What `dmole init` checks before writing a workspace: a supported family, and a processor with a chat
    template that loads. No weights are read."""
    adapter = detect_family(path)
    load_folder_processor(path, adapter)
    return adapter


def load_family(
    path: Path,
    *,
    device=None,
    dtype=None,
    trust_remote_code: bool = False,
    max_tiles: int | None = None,
    pad_to_square: bool = False,
) -> FamilyAdapter:
    """Load model and processor offline; the model is in eval mode.
    device defaults to CUDA when available; dtype to bf16 on CUDA and fp32 elsewhere. torch's CPU threads are
    set first, to a fixed function of the machine (stages/threads.py)."""
    set_threads()
    adapter = detect_family(path)
    processor = load_folder_processor(path, adapter)
    device = torch.device(device) if device is not None else default_device()
    on_cuda = device.type == "cuda"
    dtype = dtype or default_dtype(device)
    flash = on_cuda and importlib.util.find_spec("flash_attn") is not None
    model = adapter.model_class.from_pretrained(
        path,
        local_files_only=True,
        dtype=dtype,
        attn_implementation="flash_attention_2" if flash else "sdpa",
        trust_remote_code=trust_remote_code,
    )
    return adapter(model.to(device).eval(), processor, max_tiles=max_tiles, pad_to_square=pad_to_square)
