"""`dmole convert`: an InternVL2 / InternVL2.5 remote-code checkpoint -> a transformers-native InternVL folder; an
original-layout LLaVA-1.5 checkpoint, or a Llama plus LLaVA's pretrained projector, -> a transformers LLaVA folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import QuietOption, console, handles_user_errors


@handles_user_errors
def convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="Remote-code checkpoint folder (config.json with model_type internvl_chat, safetensors, tokenizer), "
            "e.g. a download of OpenGVLab/InternVL2-2B, or an original-layout LLaVA-1.5 folder "
            "(liuhaotian/llava-v1.5-7b), or with --projector a Llama folder (lmsys/vicuna-7b-v1.5).",
            metavar="SRC",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Folder to write the transformers-native checkpoint to (created; must be empty unless --force).",
            metavar="OUT",
            show_default=False,
        ),
    ],
    max_tiles: Annotated[
        int | None,
        typer.Option(
            "--max-tiles",
            min=1,
            show_default="the checkpoint's max_dynamic_patch",
            help="Most image tiles per image in the written processor (a thumbnail is added when there are several). "
            "Fewer tiles mean fewer image tokens: each tile costs image_seq_length tokens (256 at 448 px).",
        ),
    ] = None,
    projector: Annotated[
        Path | None,
        typer.Option(
            "--projector",
            show_default=False,
            help="LLaVA-1.5's pretrained projector (mm_projector.bin, or the folder holding it, e.g. "
            "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5): SRC is then the Llama it was pretrained on, "
            "and OUT CoIN's pretrain-only base.",
        ),
    ] = None,
    vision_tower: Annotated[
        Path | None,
        typer.Option(
            "--vision-tower",
            show_default=False,
            help="CLIP folder (e.g. openai/clip-vit-large-patch14-336): needed with --projector; for an "
            "original-layout LLaVA it replaces the config's mm_vision_tower.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it already holds files.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Convert an InternVL2 / InternVL2.5 checkpoint in the remote-code layout ([bold]InternVLChatModel[/], as
    D-MoLE's InternVL2-2B is published) into the transformers-native [bold]InternVLForConditionalGeneration[/]
    folder that [bold]dmole init --model[/] takes.

    Only config.json, the safetensors and the tokenizer files are read:
    no remote code is imported or run.

    Every tensor is renamed (InternLM2's wqkv and InternViT's qkv are split
    into q/k/v) and checked against the native model: a layout mismatch is
    an error, never a wrong model. The tokenizer becomes a fast tokenizer
    with <|im_end|> ending each turn, the conversation template a chat
    template, the image tiling an InternVLProcessor.

    An original-layout LLaVA-1.5 checkpoint (liuhaotian/llava-v1.5-7b:
    LlavaLlamaForCausalLM with mm_* keys) becomes a transformers LLaVA folder;
    so does a Vicuna folder with --projector mm_projector.bin and
    --vision-tower CLIP_FOLDER (CoIN's pretrain-only base).

    OUT is written whole or not at all. See docs/convert.md."""
    import json

    from dmole.stages.convert_llava import convert_checkpoint

    from .progress import rich_progress

    written = convert_checkpoint(
        src,
        out,
        max_tiles=max_tiles,
        projector=projector,
        vision_tower=vision_tower,
        force=force,
        progress=rich_progress(quiet),
    )
    config = json.loads((written / "config.json").read_text(encoding="utf-8"))
    processor = (
        json.loads((written / "processor_config.json").read_text(encoding="utf-8"))
        if (written / "processor_config.json").is_file()
        else {}
    )
    image = processor.get("image_processor", {})
    tiles = image.get("max_patches", 1) if image.get("crop_to_patches") else 1
    text, vision = config["text_config"], config["vision_config"]
    console.print(
        f"convert: wrote {written} ({text['model_type']} LM {text['num_hidden_layers']} layers, "
        f"{vision['model_type']} {vision['num_hidden_layers']} layers; {config['image_seq_length']} image "
        f"tokens per "
        f"tile, up to {tiles} tile{'s' if tiles != 1 else ''})",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command()(convert)
