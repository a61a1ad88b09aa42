"""The checkpoint's own processor, loaded offline, with or without torchvision.

transformers refuses to build the processor of any video-capable family (Qwen2-VL, InternVL,
LLaVA-OneVision, SmolVLM, ...) when torchvision is missing, because its video processor needs it.
dmole never feeds video, so where torchvision is absent the same processor class is assembled
from the folder's other parts (tokenizer, image processor, chat template, processor config) with
no video processor. Where torchvision is present, AutoProcessor is used as is.
"""

from __future__ import annotations

import importlib.util
import inspect
from functools import cache
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

SUB_PROCESSORS = ("image_processor", "tokenizer", "video_processor")


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


class NoVideo:
    """Stands in for the video processor of a processor assembled without torchvision. dmole never feeds
    video; some processors (SmolVLM's) still read its frame-sampling defaults, which are then unset."""

    num_frames = None
    fps = None


@cache
def without_video(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """``processor_class`` built without a video processor (a `NoVideo` stands in); the class itself when it
    has none."""
    if "video_processor" not in processor_class.get_attributes():
        return processor_class
    kept = [
        p for name, p in inspect.signature(processor_class.__init__).parameters.items() if name != "video_processor"
    ]

    def __init__(self, *args, **kwargs):
        processor_class.__init__(self, *args, video_processor=None, **kwargs)

    # ProcessorMixin reads the sub-processors from __init__'s signature.
    __init__.__signature__ = inspect.Signature(kept)
    return type(
        processor_class.__name__,
        (processor_class,),
        {"__init__": __init__, "__module__": __name__, "video_processor": NoVideo()},
    )


def load_processor(path: Path, processor_class: type[ProcessorMixin]) -> ProcessorMixin:
    """The folder's processor: AutoProcessor where torchvision is importable, else the video-less class
    built from the same files (either layout: processor_config.json or preprocessor_config.json, and the
    chat template from chat_template.jinja, chat_template.json or the tokenizer config)."""
    if has_torchvision():
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    settings, _ = processor_class.get_processor_dict(path, local_files_only=True)
    accepted = set(inspect.signature(processor_class.__init__).parameters) - {"self", "kwargs", *SUB_PROCESSORS}
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    settings["chat_template"] = settings.get("chat_template") or tokenizer.chat_template
    return without_video(processor_class)(
        image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
        tokenizer=tokenizer,
        **{key: value for key, value in settings.items() if key in accepted},
    )


def build_processor(processor_class: type[ProcessorMixin], **parts) -> ProcessorMixin:
    """A new processor from its parts (no video processor where torchvision is absent)."""
    return (processor_class if has_torchvision() else without_video(processor_class))(**parts)
