"""Per supported family, at a representative checkpoint's published dimensions: the D-MoLE candidate
modules of each tower and the image tokens the family's processor writes for one 448 x 448 image.

Each model is built from its transformers config on the meta device (no weights, no download) and its
processor from the family's processor classes with the checkpoint's preprocessing settings and a small
tokenizer carrying the family's special tokens, so the counts come from the same code dmole runs.

    python bench/families.py --markdown bench/results/families.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers as tf
from PIL import Image

from dmole.stages.models.catalog import MODEL_TYPES
from dmole.stages.models.processor import build_processor
from dmole.stages.models.registry import family_adapter
from dmole.stages.models.tiny import TEMPLATES, TOKENIZERS, train_tokenizer

SIDE = 448
tf.logging.set_verbosity_error()  # the meta models' small vocabularies do not hold the real special-token ids


def _lm(cls, hidden, inter, layers, heads, kv, **extra):
    return cls(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=1024,
        **extra,
    )


def _vit(cls, hidden, inter, layers, heads, image, patch, **extra):
    return cls(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
        **extra,
    )


CLIP_336 = dict(hidden=1024, inter=4096, layers=24, heads=16, image=336, patch=14)
SIGLIP_SO400M = dict(hidden=1152, inter=4304, layers=27, heads=16, patch=14)
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def checkpoints(tok):
    """(family, checkpoint, config, processor class, processor parts) at published dimensions."""
    ids = tok.convert_tokens_to_ids

    def qwen_ids():
        return dict(
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )

    qwen_pixels = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    yield (
        "llava",
        "llava-1.5-7b-hf",
        lambda: tf.LlavaConfig(
            vision_config=_vit(tf.CLIPVisionConfig, **CLIP_336),
            text_config=_lm(tf.LlamaConfig, 4096, 11008, 32, 32, 32),
            image_token_index=ids("<image>"),
            vision_feature_layer=-2,
        ),
        tf.LlavaProcessor,
        dict(
            image_processor=tf.CLIPImageProcessorPil(
                size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
            ),
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
    )
    yield (
        "llava_next",
        "llava-v1.6-mistral-7b-hf",
        lambda: tf.LlavaNextConfig(
            vision_config=_vit(tf.CLIPVisionConfig, **CLIP_336),
            text_config=_lm(tf.MistralConfig, 4096, 14336, 32, 32, 8),
            image_token_index=ids("<image>"),
            image_grid_pinpoints=NEXT_PINPOINTS,
            vision_feature_layer=-2,
        ),
        tf.LlavaNextProcessor,
        dict(
            image_processor=tf.LlavaNextImageProcessorPil(
                size={"shortest_edge": 336},
                image_grid_pinpoints=NEXT_PINPOINTS,
                crop_size={"height": 336, "width": 336},
            ),
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
    )
    yield (
        "llava_onevision",
        "llava-onevision-qwen2-0.5b-ov-hf",
        lambda: tf.LlavaOnevisionConfig(
            vision_config=_vit(tf.SiglipVisionConfig, **{**SIGLIP_SO400M, "layers": 26}, image=384),
            text_config=_lm(tf.Qwen2Config, 896, 4864, 24, 14, 2),
            image_token_index=ids("<image>"),
            video_token_index=ids("<video>"),
            image_grid_pinpoints=ONEVISION_PINPOINTS,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        ),
        tf.LlavaOnevisionProcessor,
        dict(
            image_processor=tf.LlavaOnevisionImageProcessorPil(
                size={"height": 384, "width": 384}, image_grid_pinpoints=ONEVISION_PINPOINTS
            ),
            num_image_tokens=729,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        ),
    )
    internvit = dict(hidden=1024, inter=4096, layers=24, heads=16, image=448, patch=14)
    for name, lm, tiles in (
        ("InternVL3-1B-hf", _lm(tf.Qwen2Config, 896, 4864, 24, 14, 2), 12),
        ("InternVL2-2B (dmole convert, 6 tiles)", _lm(tf.LlamaConfig, 2048, 8192, 24, 16, 8), 6),
    ):
        yield (
            "internvl",
            name,
            lambda lm=lm: tf.InternVLConfig(
                vision_config=_vit(tf.InternVLVisionConfig, **internvit),
                text_config=lm,
                image_token_id=ids("<IMG_CONTEXT>"),
                downsample_ratio=0.5,
            ),
            tf.InternVLProcessor,
            dict(
                image_processor=tf.GotOcr2ImageProcessorPil(
                    size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=tiles
                ),
                image_seq_length=256,
            ),
        )
    yield (
        "qwen2vl",
        "Qwen2-VL-2B-Instruct",
        lambda: tf.Qwen2VLConfig(
            vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14),
            text_config=dict(
                hidden_size=1536,
                intermediate_size=8960,
                num_hidden_layers=28,
                num_attention_heads=12,
                num_key_value_heads=2,
                vocab_size=1024,
            ),
            **qwen_ids(),
        ),
        tf.Qwen2VLProcessor,
        dict(image_processor=tf.Qwen2VLImageProcessorPil(**qwen_pixels)),
    )
    yield (
        "qwen2_5_vl",
        "Qwen2.5-VL-3B-Instruct",
        lambda: tf.Qwen2_5_VLConfig(
            vision_config=dict(
                depth=32,
                hidden_size=1280,
                intermediate_size=3420,
                num_heads=16,
                out_hidden_size=2048,
                patch_size=14,
                window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31],
            ),
            text_config=dict(
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                vocab_size=1024,
            ),
            **qwen_ids(),
        ),
        tf.Qwen2_5_VLProcessor,
        dict(image_processor=tf.Qwen2VLImageProcessorPil(**qwen_pixels)),
    )
    yield (
        "qwen3_vl",
        "Qwen3-VL-2B-Instruct",
        lambda: tf.Qwen3VLConfig(
            vision_config=dict(
                depth=24,
                hidden_size=1024,
                intermediate_size=4096,
                num_heads=16,
                out_hidden_size=2048,
                patch_size=16,
                num_position_embeddings=2304,
                deepstack_visual_indexes=[5, 11, 17],
            ),
            text_config=dict(
                hidden_size=2048,
                intermediate_size=6144,
                num_hidden_layers=28,
                num_attention_heads=16,
                num_key_value_heads=8,
                head_dim=128,
                vocab_size=1024,
            ),
            **qwen_ids(),
        ),
        tf.Qwen3VLProcessor,
        dict(
            image_processor=tf.Qwen2VLImageProcessorPil(
                patch_size=16, merge_size=2, min_pixels=65536, max_pixels=16777216
            )
        ),
    )
    for family, name, config_class, processor_class, image_class, vision, lm, side, scale, longest in (
        (
            "smolvlm",
            "SmolVLM-256M-Instruct",
            tf.SmolVLMConfig,
            tf.SmolVLMProcessor,
            tf.SmolVLMImageProcessorPil,
            dict(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                image_size=512,
                patch_size=16,
            ),
            dict(
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
            ),
            512,
            4,
            2048,
        ),
        (
            "idefics3",
            "Idefics3-8B-Llama3",
            tf.Idefics3Config,
            tf.Idefics3Processor,
            tf.Idefics3ImageProcessorPil,
            dict(
                hidden_size=1152,
                intermediate_size=4304,
                num_hidden_layers=27,
                num_attention_heads=16,
                image_size=364,
                patch_size=14,
            ),
            dict(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
            ),
            364,
            2,
            1456,
        ),
    ):
        yield (
            family,
            name,
            lambda c=config_class, v=vision, m=lm, s=scale: c(
                vision_config=v,
                text_config=dict(**m, vocab_size=1024, model_type="llama"),
                scale_factor=s,
                image_token_id=ids("<image>"),
            ),
            processor_class,
            dict(
                image_processor=image_class(size={"longest_edge": longest}, max_image_size={"longest_edge": side}),
                image_seq_len=(side // (vision["patch_size"] * scale)) ** 2,
            ),
        )
    yield (
        "gemma3",
        "gemma-3-4b-it",
        lambda: tf.Gemma3Config(
            vision_config=_vit(tf.SiglipVisionConfig, **SIGLIP_SO400M, image=896),
            text_config=_lm(tf.Gemma3TextConfig, 2560, 10240, 34, 8, 4, head_dim=256),
            mm_tokens_per_image=256,
            image_token_index=ids("<image_soft_token>"),
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
        ),
        tf.Gemma3Processor,
        dict(image_processor=tf.Gemma3ImageProcessorPil(size={"height": 896, "width": 896}), image_seq_length=256),
    )


def measure() -> list[dict]:
    rows = []
    image = Image.new("RGB", (SIDE, SIDE), (120, 60, 200))
    tokenizers = {family: train_tokenizer(spec) for family, spec in TOKENIZERS.items()}
    for family in MODEL_TYPES:
        tok, adapter_class = tokenizers[family], family_adapter(family)
        for _, name, config, processor_class, parts in (c for c in checkpoints(tok) if c[0] == family):
            with torch.device("meta"):
                model = adapter_class.model_class(config())
            processor = build_processor(processor_class, tokenizer=tok, chat_template=TEMPLATES[family], **parts)
            adapter = adapter_class(model, processor)
            attention, everything = adapter.candidates(), adapter.candidates(include_mlp=True)
            count = lambda cs, tower: sum(c.tower == tower for c in cs)  # noqa: E731
            # The toolkit's prompt ids equal the processor's (tests/test_models.py); the model is on meta.
            ids = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )["input_ids"]
            rows.append(
                {
                    "family": family,
                    "checkpoint": name,
                    "vision": count(attention, "vision"),
                    "language": count(attention, "language"),
                    "vision_mlp": count(everything, "vision"),
                    "language_mlp": count(everything, "language"),
                    "vision_layers": f"{adapter._vision_layers_used()}/{len(adapter.vision_layers())}",
                    "image_tokens": int((ids == model.config.image_token_id).sum()),
                    "sequence": int(ids.shape[1]),
                    "images": adapter_class.image_handling,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | checkpoint (published dimensions) | vision layers used | candidates: vision / language "
        "(attention) | with MLPs | image tokens, 448 x 448 | prompt tokens | image handling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['family']} | {r['checkpoint']} | {r['vision_layers']} | {r['vision']} / {r['language']} | "
        f"{r['vision_mlp']} / {r['language_mlp']} | {r['image_tokens']} | {r['sequence']} | {r['images']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    table = markdown(measure())
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
