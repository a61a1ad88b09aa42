"""Family lookup and loading from a local Hugging Face folder."""

from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .. import distributed
from .base import FamilyAdapter, ModelFamilyError
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .qwen2vl import Qwen2VLAdapter

FAMILIES: dict[str, type[FamilyAdapter]] = {a.family: a for a in (LlavaAdapter, InternVLAdapter, Qwen2VLAdapter)}


def detect_family(path: Path) -> type[FamilyAdapter]:
    """The adapter class for the folder's config.json `model_type`."""
    supported = ", ".join(f"{a.family} ({a.model_type})" for a in FAMILIES.values())
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ModelFamilyError(f"{path}: no config.json; supported families: {supported}")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise ModelFamilyError(f"{config}: unreadable ({error})") from None
    for adapter in FAMILIES.values():
        if adapter.model_type == model_type:
            return adapter
    raise ModelFamilyError(f"{path}: model_type {model_type!r} is not supported; supported families: {supported}")


def default_device() -> torch.device:
    """This process's device under a launcher, else CUDA when available, else the CPU."""
    return distributed.device() or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_family(path: Path, *, device=None, dtype=None, trust_remote_code: bool = False) -> FamilyAdapter:
    """Load model, tokenizer and image processor offline; the model is in eval mode.
    device defaults to CUDA when available; dtype to bf16 on CUDA and fp32 elsewhere."""
    adapter = detect_family(path)
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
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    image_processor = adapter.image_processor_class.from_pretrained(path, local_files_only=True)
    return adapter(model.to(device).eval(), tokenizer, image_processor)
