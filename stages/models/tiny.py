"""Tiny random-weight checkpoints of every supported family, written by transformers' own
`save_pretrained` (model and processor), as hub folders hold them: for tests and the synthetic base.

Each family gets its real special tokens and chat template on a small byte-level BPE tokenizer trained
here, and its own config, model, image-processor and processor classes. `layout="hub"` writes the older
hub layout instead (image processor in preprocessor_config.json, template only in chat_template.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from . import chat_templates
from .base import ModelFamilyError
from .processor import build_processor
from .registry import family_adapter
from .tokenizer import build_byte_tokenizer

LAYOUTS = ("current", "hub")


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny model; the defaults train quickly on a CPU."""

    lm_layers: int = 8
    lm_hidden: int = 128
    lm_heads: int = 4
    lm_kv_heads: int = 2
    lm_intermediate: int = 256
    vision_layers: int = 4
    vision_hidden: int = 64
    vision_heads: int = 2
    vision_intermediate: int = 128
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int | None = None  # None: the tokenizer's; larger gives a real model's embedding shapes

    def __post_init__(self) -> None:
        if self.image_size % (2 * self.patch_size):
            raise ValueError("image_size must be a multiple of 2 * patch_size (2x2 token merges)")
        if self.vision_intermediate % self.vision_hidden:
            raise ValueError("vision_intermediate must be a multiple of vision_hidden (Qwen2-VL mlp_ratio)")

    @property
    def grid(self) -> int:
        """Patches along one side of the encoder's native view."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TokenizerSpec:
    """A family's special tokens: role tokens, named multimodal tokens and the ones ending a turn."""

    eos: str
    pad: str
    bos: str | None = None
    unk: str | None = None
    prepends_bos: bool = False  # the tokenizer adds BOS itself (Llama), rather than the template
    named: dict[str, str] = field(default_factory=dict)  # tokenizer attributes the processor reads
    extra: tuple[str, ...] = ()
    turn_end: str | None = None  # a second stop token besides EOS (Gemma's <end_of_turn>)

    def specials(self) -> list[str]:
        tokens = [self.pad, self.bos, self.eos, self.unk, self.turn_end, *self.named.values(), *self.extra]
        return list(dict.fromkeys(t for t in tokens if t))


# Text the tokenizers are trained on: prompts and answers of the kind the tests and the synthetic tasks use.
_CORPUS = [
    "What is shown in the image? Answer the question using a single word or phrase.",
    "Provide a one-sentence caption for the provided image. A red square on a blue background.",
    "Please provide the bounding box coordinate of the region this sentence describes: [0.12, 0.40, 0.88, 0.95]",
    "Which colour is the shape? A. red B. green C. blue D. yellow. Answer with the option's letter directly.",
    "system user assistant model Assistant User ASSISTANT USER You are a helpful assistant.",
    "When the provided information is insufficient, respond with 'Unanswerable'. The number is 42.",
    "a photo of a cat sitting on a wooden table next to a cup of coffee, three dogs, handwritten digits",
]

_QWEN = TokenizerSpec(
    eos="<|im_end|>",
    pad="<|endoftext|>",
    extra=("<|im_start|>",),
    named={
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
)
_SMOL_NAMED = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
_TILE_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
TOKENIZERS: dict[str, TokenizerSpec] = {
    "llava": TokenizerSpec(
        bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", prepends_bos=True, named={"image_token": "<image>"}
    ),
    "llava_next": TokenizerSpec(
        bos="<s>", eos="</s>", unk="<unk>", pad="<unk>", prepends_bos=True, named={"image_token": "<image>"}
    ),
    "llava_onevision": TokenizerSpec(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>",),
        named={"image_token": "<image>", "video_token": "<video>"},
    ),
    "internvl": TokenizerSpec(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>",),
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    ),
    "qwen2vl": _QWEN,
    "qwen2_5_vl": _QWEN,
    "qwen3_vl": _QWEN,
    "smolvlm": TokenizerSpec(
        bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>", named=_SMOL_NAMED, extra=_TILE_TOKENS
    ),
    "idefics3": TokenizerSpec(
        bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<|end_of_text|>", named=_SMOL_NAMED, extra=_TILE_TOKENS
    ),
    "gemma3": TokenizerSpec(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        prepends_bos=True,
        turn_end="<end_of_turn>",
        extra=("<start_of_turn>",),
        named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    ),
}
TEMPLATES = {
    "llava": chat_templates.LLAVA,
    "llava_next": chat_templates.LLAVA_NEXT,
    "llava_onevision": chat_templates.LLAVA_ONEVISION,
    "internvl": chat_templates.INTERNVL,
    "qwen2vl": chat_templates.QWEN2_VL,
    "qwen2_5_vl": chat_templates.QWEN2_VL,
    "qwen3_vl": chat_templates.QWEN3_VL,
    "smolvlm": chat_templates.SMOLVLM,
    "idefics3": chat_templates.IDEFICS3,
    "gemma3": chat_templates.GEMMA3,
}


# What each family's template writes for an image, for the byte tokenizer's own template.
BYTE_IMAGE_MARKUP = {
    "llava": "<image>",
    "internvl": "<IMG_CONTEXT>",
    "qwen2vl": "<|vision_start|><|image_pad|><|vision_end|>",
}


def train_tokenizer(spec: TokenizerSpec, vocab_size: int = 400) -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small corpus, carrying ``spec``'s special tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec.specials(),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS, trainer)
    if spec.prepends_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, backend.token_to_id(spec.bos))],
        )
    named = set(spec.named.values())
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        model_specific_special_tokens=spec.named,
        extra_special_tokens=[t for t in spec.specials() if t in named or t in spec.extra or t == spec.turn_end],
    )


def _lm(size: TinySize, tokenizer) -> dict:
    return dict(
        vocab_size=max(size.vocab_size or 0, len(tokenizer)),
        hidden_size=size.lm_hidden,
        intermediate_size=size.lm_intermediate,
        num_hidden_layers=size.lm_layers,
        num_attention_heads=size.lm_heads,
        num_key_value_heads=size.lm_kv_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _vit(size: TinySize) -> dict:
    return dict(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )


def _square(size: TinySize) -> dict:
    return {"height": size.image_size, "width": size.image_size}


def _token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


# ---- one builder per family: (config, processor parts besides tokenizer and template) ------------------
def _llava(size, tok):
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**_vit(size)),
        text_config=tf.LlamaConfig(**_lm(size, tok)),
        image_token_index=_token_id(tok, "<image>"),
        image_seq_length=size.grid**2,
        vision_feature_layer=-1,
    )  # every vision layer reaches the projector
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": size.image_size}, crop_size=_square(size))
    return (
        config,
        tf.LlavaProcessor,
        dict(
            image_processor=image_processor,
            patch_size=size.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
    )


def _pinpoints(size: TinySize) -> list[list[int]]:
    s = size.image_size
    return [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]


def _llava_next(size, tok):
    config = tf.LlavaNextConfig(
        vision_config=tf.CLIPVisionConfig(**_vit(size)),
        text_config=tf.MistralConfig(**_lm(size, tok)),
        image_token_index=_token_id(tok, "<image>"),
        image_grid_pinpoints=_pinpoints(size),
        vision_feature_layer=-2,
    )
    image_processor = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": size.image_size}, crop_size=_square(size), image_grid_pinpoints=_pinpoints(size)
    )
    return (
        config,
        tf.LlavaNextProcessor,
        dict(
            image_processor=image_processor,
            patch_size=size.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
    )


def _llava_onevision(size, tok):
    config = tf.LlavaOnevisionConfig(
        vision_config=tf.SiglipVisionConfig(**_vit(size)),
        text_config=tf.Qwen2Config(**_lm(size, tok)),
        image_token_index=_token_id(tok, "<image>"),
        video_token_index=_token_id(tok, "<video>"),
        image_grid_pinpoints=_pinpoints(size),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    image_processor = tf.LlavaOnevisionImageProcessorPil(size=_square(size), image_grid_pinpoints=_pinpoints(size))
    return (
        config,
        tf.LlavaOnevisionProcessor,
        dict(
            image_processor=image_processor,
            num_image_tokens=size.grid**2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        ),
    )


def _internvl(size, tok):
    config = tf.InternVLConfig(
        vision_config=tf.InternVLVisionConfig(**_vit(size)),
        text_config=tf.Qwen2Config(**_lm(size, tok)),
        image_token_id=_token_id(tok, "<IMG_CONTEXT>"),
        image_seq_length=size.grid**2 // 4,
    )
    image_processor = tf.GotOcr2ImageProcessorPil(
        size=_square(size), crop_to_patches=True, min_patches=1, max_patches=12
    )
    return config, tf.InternVLProcessor, dict(image_processor=image_processor, image_seq_length=size.grid**2 // 4)


def _mrope(size: TinySize) -> list[int]:
    half = size.lm_hidden // size.lm_heads // 2  # M-RoPE splits half a head into (t, h, w)
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _qwen_ids(tok) -> dict:
    return dict(
        image_token_id=_token_id(tok, "<|image_pad|>"),
        video_token_id=_token_id(tok, "<|video_pad|>"),
        vision_start_token_id=_token_id(tok, "<|vision_start|>"),
        vision_end_token_id=_token_id(tok, "<|vision_end|>"),
    )


def _qwen_image_processor(size: TinySize):
    factor = size.patch_size * 2  # spatial merge 2x2
    return tf.Qwen2VLImageProcessorPil(
        patch_size=size.patch_size, merge_size=2, min_pixels=factor**2, max_pixels=4 * size.image_size**2
    )


def _qwen2vl(size, tok):
    config = tf.Qwen2VLConfig(
        vision_config=dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden,
            hidden_size=size.lm_hidden,
            num_heads=size.vision_heads,
            mlp_ratio=size.vision_intermediate // size.vision_hidden,
            patch_size=size.patch_size,
        ),
        text_config=dict(**_lm(size, tok), rope_parameters=dict(rope_type="default", mrope_section=_mrope(size))),
        **_qwen_ids(tok),
    )
    return config, tf.Qwen2VLProcessor, dict(image_processor=_qwen_image_processor(size))


def _qwen_vit(size: TinySize, **extra) -> dict:
    """The Qwen2.5-VL / Qwen3-VL vision config (Qwen2-VL names its widths differently)."""
    return dict(
        depth=size.vision_layers,
        hidden_size=size.vision_hidden,
        out_hidden_size=size.lm_hidden,
        intermediate_size=size.vision_intermediate,
        num_heads=size.vision_heads,
        patch_size=size.patch_size,
        **extra,
    )


def _qwen2_5_vl(size, tok):
    config = tf.Qwen2_5_VLConfig(
        vision_config=_qwen_vit(size, window_size=4 * size.patch_size, fullatt_block_indexes=[size.vision_layers - 1]),
        text_config=dict(**_lm(size, tok), rope_parameters=dict(rope_type="default", mrope_section=_mrope(size))),
        **_qwen_ids(tok),
    )
    return config, tf.Qwen2_5_VLProcessor, dict(image_processor=_qwen_image_processor(size))


def _qwen3_vl(size, tok):
    config = tf.Qwen3VLConfig(
        vision_config=_qwen_vit(size, num_position_embeddings=size.grid**2, deepstack_visual_indexes=[1, 2]),
        text_config=dict(
            **_lm(size, tok),
            head_dim=size.lm_hidden // size.lm_heads,
            rope_parameters=dict(rope_type="default", mrope_section=_mrope(size), mrope_interleaved=True),
        ),
        **_qwen_ids(tok),
    )
    return config, tf.Qwen3VLProcessor, dict(image_processor=_qwen_image_processor(size))


def _smolvlm_parts(size, tok, config_class, processor_class, image_processor_class):
    config = config_class(
        vision_config=dict(**_vit(size)),
        text_config=dict(**_lm(size, tok), model_type="llama"),
        scale_factor=2,
        image_token_id=_token_id(tok, "<image>"),
    )
    image_processor = image_processor_class(
        size={"longest_edge": 2 * size.image_size}, max_image_size={"longest_edge": size.image_size}
    )
    return config, processor_class, dict(image_processor=image_processor, image_seq_len=size.grid**2 // 4)


def _smolvlm(size, tok):
    return _smolvlm_parts(size, tok, tf.SmolVLMConfig, tf.SmolVLMProcessor, tf.SmolVLMImageProcessorPil)


def _idefics3(size, tok):
    return _smolvlm_parts(size, tok, tf.Idefics3Config, tf.Idefics3Processor, tf.Idefics3ImageProcessorPil)


def _gemma3(size, tok):
    lm = _lm(size, tok) | dict(head_dim=size.lm_hidden // size.lm_heads, sliding_window=64)
    config = tf.Gemma3Config(
        vision_config=tf.SiglipVisionConfig(**_vit(size)),
        text_config=tf.Gemma3TextConfig(**lm),
        mm_tokens_per_image=size.grid**2 // 4,
        image_token_index=_token_id(tok, "<image_soft_token>"),
        boi_token_index=_token_id(tok, "<start_of_image>"),
        eoi_token_index=_token_id(tok, "<end_of_image>"),
    )
    image_processor = tf.Gemma3ImageProcessorPil(size=_square(size))
    return config, tf.Gemma3Processor, dict(image_processor=image_processor, image_seq_length=size.grid**2 // 4)


_BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "internvl": _internvl,
    "qwen2vl": _qwen2vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "smolvlm": _smolvlm,
    "idefics3": _idefics3,
    "gemma3": _gemma3,
}


def build_tiny(
    family: str,
    out_dir: Path,
    *,
    seed: int = 0,
    size: TinySize = TinySize(),
    byte_tokenizer: bool = False,
    layout: str = "current",
) -> Path:
    """Build a random-weight model of ``family`` with its processor and save both, loadable by `load_family`.

    ``byte_tokenizer`` replaces the family's trained tokenizer and template by the byte-level tokenizer and
    its ChatML template (the synthetic base: any text encodes losslessly)."""
    if family not in _BUILDERS:
        raise ModelFamilyError(f"unknown family {family!r}; supported: {', '.join(_BUILDERS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if byte_tokenizer and family not in BYTE_IMAGE_MARKUP:
        raise ModelFamilyError(f"the byte tokenizer serves {', '.join(BYTE_IMAGE_MARKUP)} only, not {family!r}")
    spec = TOKENIZERS[family]
    tokenizer = build_byte_tokenizer(BYTE_IMAGE_MARKUP[family], spec.named) if byte_tokenizer else train_tokenizer(spec)
    config, processor_class, parts = _BUILDERS[family](size, tokenizer)
    torch.manual_seed(seed)
    model = family_adapter(family).model_class(config)
    with torch.no_grad():  # some projectors start at zero (Gemma 3's): no signal would reach the vision tower
        for weight in (p for p in model.parameters() if p.dim() >= 2 and not p.any()):
            weight.normal_(std=0.02)
    stop = [tokenizer.eos_token_id] + (
        [_token_id(tokenizer, spec.turn_end)] if spec.turn_end in tokenizer.get_vocab() else []
    )
    model.generation_config.update(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop if len(stop) > 1 else stop[0],
    )
    template = tokenizer.chat_template or TEMPLATES[family]
    processor = build_processor(processor_class, tokenizer=tokenizer, chat_template=template, **parts)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if layout == "hub":
        _to_hub_layout(out_dir)
    return out_dir


def _to_hub_layout(folder: Path) -> None:
    """Rewrite a current-layout processor as transformers 4.x wrote it: the image processor alone in
    preprocessor_config.json, the template only in chat_template.json (none in the tokenizer config)."""
    processor_file = folder / "processor_config.json"
    settings = json.loads(processor_file.read_text())
    image_settings = settings.pop("image_processor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image_settings, indent=2))
    processor_file.write_text(json.dumps(settings, indent=2))
    template = folder / "chat_template.jinja"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}, indent=2))
    template.unlink()
    tokenizer_file = folder / "tokenizer_config.json"
    tokenizer_settings = json.loads(tokenizer_file.read_text())
    tokenizer_settings.pop("chat_template", None)
    tokenizer_file.write_text(json.dumps(tokenizer_settings, indent=2))
