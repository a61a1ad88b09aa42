"""A byte-level tokenizer for tiny models: any UTF-8 text encodes losslessly."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, TURN_START, TURN_END = "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"
# Image tokens of every supported family, so one vocabulary serves them all.
IMAGE_TOKENS = (
    "<image>",  # LLaVA
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",  # InternVL
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",  # Qwen2-VL
)

_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_MARKUP\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def build_byte_tokenizer(image_markup: str = "<image>", named: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """Token id b is byte b (0..255); special tokens follow. `image_markup` is what the
    chat template writes for an image part (the family's un-expanded image placeholder); `named`
    gives tokenizer attributes a family's processor reads (InternVL's `start_image_token`, ...)."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    extra = list(dict.fromkeys([TURN_START, *IMAGE_TOKENS, *(named or {}).values()]))
    # Ids are fixed here, in this order (BOS 256, EOS 257, PAD 258, then the rest).
    backend.add_special_tokens([BOS, TURN_END, PAD, *extra])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=TURN_END,
        extra_special_tokens=extra,
        model_specific_special_tokens=named or {},
        chat_template=_TEMPLATE.replace("IMAGE_MARKUP", image_markup),
    )
