"""`dmole convert` for LLaVA-1.5 in its original layout (liuhaotian/llava-v1.5-7b) -> a transformers LLaVA folder.

The original checkpoint is haotian-liu/LLaVA's ``LlavaLlamaForCausalLM``: ``config.json`` with ``model_type: llava``
and the ``mm_*`` keys (``mm_vision_tower``, ``mm_projector_type: mlp2x_gelu``, ``mm_vision_select_layer: -2``,
``mm_vision_select_feature: patch``, ``image_aspect_ratio: pad``), a Llama under ``model.*`` / ``lm_head``, the
projector under ``model.mm_projector.{0,2}`` and CLIP's vision model under
``model.vision_tower.vision_tower.vision_model.*``
(or, where the checkpoint leaves it out, in the ``mm_vision_tower`` folder: a CLIP or CLIPVisionModel checkpoint).

transformers' own converter (``models/llava/convert_llava_weights_to_hf.py`` in its repository) is not shipped in
the installed package, so its steps are followed here with transformers' own pieces: its key mapping
(KEYS_TO_MODIFY_MAPPING) written as rules for the native names of ``LlavaForConditionalGeneration``, ``<image>``
and ``<pad>`` added to the tokenizer, and ``resize_token_embeddings(..., pad_to_multiple_of=64)``, whose mean
resizing draws the new rows as that script did (seeded here, so a conversion is reproducible). The selection
(layer −2, patch tokens without CLS) and the GELU MLP projector are the native model's defaults; "pad" images are
padded to a square with the image mean, as ``LlavaImageProcessor(do_pad=True)`` does. See docs/convert.md.

CoIN's pretrain-only base (a Vicuna folder, the ``mm_projector.bin`` of LLaVA-1.5's pretrain stage and a CLIP tower
folder, as CoIN's training scripts pass them) goes through the same steps: the Vicuna's config gets LLaVA-1.5's
``mm_*`` settings and its tensors the projector's, and the result is converted as an original checkpoint would be.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
from pathlib import Path

from .convert import (
    READING,
    ConvertError,
    _check_out,
    _load_tokenizer,
    _read_json,
    _rename,
    _replace,
    _safetensors_files,
    _tokenizer_folder,
    convert_state_dict,
    iter_source_tensors,
    tensor_count,
)
from .progress import Progress, Tracker, silent

IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"
# openai/clip-vit-large-patch14-336, the tower every LLaVA-1.5 checkpoint names, for when its folder is not here
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
KNOWN_TOWERS = {"openai/clip-vit-large-patch14-336": CLIP_L_336}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# LLaVA-1.5's conv_vicuna_v1 (llava/conversation.py, SeparatorStyle.TWO): the system line and " ", then each turn
# as "USER: " + text + " " or "ASSISTANT: " + text + "</s>"; the image placeholder "<image>\n" precedes its text.
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
_IGNORED = re.compile(r".*rotary_emb\.inv_freq|model\.image_newline")
_TEXT_ONLY = re.compile(r"(?:clip\.)?(?:text_model\..*|text_projection\..*|visual_projection\..*|logit_scale)")

WEIGHT_RULES = [
    # CLIPVisionModel's names as LLaVA saved them (transformers 4: vision_model.*), or flat as transformers 5 names them
    (r"model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)", r"model.vision_tower.\1"),
    (r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
    (r"model\.((?:embed_tokens|layers|norm)\..+)", r"model.language_model.\1"),
    (r"lm_head\.weight", "lm_head.weight"),
]
TOWER_PREFIX = "model.vision_tower.vision_tower."  # a tower folder's tensors are read as if the checkpoint held them
# What CoIN's scripts set on the pretrain-only base for fine-tuning (zackschen/CoIN@4122465
# scripts/LLaVA/Train/1_Science.sh: --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --mm_use_im_start_end
# False --mm_use_im_patch_token False --image_aspect_ratio pad; mm_vision_select_feature keeps its default, patch).
# The pretrain run's own config.json says image_aspect_ratio square (LLaVA's pretrain.sh), so it is not read.
LLAVA_15_SETTINGS = {
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "image_aspect_ratio": "pad",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
}
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_KEY = "mm_projector."


def is_original_llava(config: dict) -> bool:
    """Whether a config.json is haotian-liu/LLaVA's (mm_* keys at the top level, no vision_config)."""
    return isinstance(config, dict) and "mm_vision_tower" in config and "vision_config" not in config


def read_llava_config(src: Path) -> dict:
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder")
    config = _read_json(src / "config.json")
    if not is_original_llava(config):
        raise ConvertError(f"{src / 'config.json'}: not an original-layout LLaVA checkpoint (no mm_vision_tower)")
    checks = {"mm_projector_type": "mlp2x_gelu", "mm_vision_select_feature": "patch"}
    for key, value in checks.items():
        if config.get(key, value) != value:
            raise ConvertError(f"config.json: {key} is {config[key]!r}; only {value!r} (LLaVA-1.5) is supported")
    if config.get("mm_use_im_start_end") or config.get("mm_use_im_patch_token"):
        raise ConvertError(
            "config.json: mm_use_im_start_end / mm_use_im_patch_token are not LLaVA-1.5's; not supported"
        )
    return config


def pretrain_config(src: Path, vision_tower: Path) -> dict:
    """An original-layout config for the Llama (Vicuna) folder SRC: its own config, LLaVA-1.5's mm settings, the
    tower folder (as LLaVA's initialize_vision_modules sets config.mm_vision_tower from --vision_tower)."""
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder")
    config = _read_json(src / "config.json")
    if is_original_llava(config):
        raise ConvertError(f"{src / 'config.json'} is already a LLaVA checkpoint; convert it without --projector")
    if config.get("model_type") != "llama":
        raise ConvertError(
            f"{src / 'config.json'}: model_type is {config.get('model_type')!r}; --projector takes the Llama "
            "(Vicuna) language model that LLaVA-1.5's projector was pretrained on"
        )
    return {**config, **LLAVA_15_SETTINGS, "mm_vision_tower": str(vision_tower)}


def read_projector(path: Path) -> dict:
    """``mm_projector.bin`` (the file, or the pretrain folder holding it) under the checkpoint's names. LLaVA saves
    it with torch.save as ``model.mm_projector.{0,2}.{weight,bias}`` (get_mm_adapter_state_maybe_zero_3); like its
    initialize_vision_modules, what precedes ``mm_projector.`` is dropped. Read with ``weights_only=True``: tensors,
    never code."""
    import torch

    file = path / PROJECTOR_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConvertError(f"--projector {path}: no such file" + (f" ({PROJECTOR_FILE})" if path.is_dir() else ""))
    try:
        weights = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConvertError(f"{file} is not a torch-saved dict of tensors ({str(error).splitlines()[0]})") from None
    if not isinstance(weights, dict) or not weights:
        raise ConvertError(f"{file} holds no tensors (a dict of projector tensors was expected)")
    tensors = {}
    for name, tensor in weights.items():
        _, found, rest = str(name).partition(PROJECTOR_KEY)
        if not found or not isinstance(tensor, torch.Tensor):
            raise ConvertError(f"{file}: {name!r} is not a projector tensor ({PROJECTOR_KEY}*)")
        tensors[f"model.{PROJECTOR_KEY}{rest}"] = tensor
    return tensors


def _tower_folder(src: Path, config: dict) -> Path | None:
    """The vision tower's folder, if mm_vision_tower names one on this machine (absolute, or beside SRC)."""
    name = str(config["mm_vision_tower"])
    for candidate in (Path(name).expanduser(), src / name):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def vision_config_dict(src: Path, config: dict) -> dict:
    """CLIP's vision config: from the tower folder's config.json, else the known tower's."""
    folder = _tower_folder(src, config)
    if folder is not None:
        tower = _read_json(folder / "config.json")
        return dict(tower.get("vision_config", tower))
    name = str(config["mm_vision_tower"])
    if name in KNOWN_TOWERS:
        return dict(KNOWN_TOWERS[name])
    raise ConvertError(
        f"mm_vision_tower {name!r} is neither a folder on this machine nor a known tower "
        f"({', '.join(KNOWN_TOWERS)}); download it and point mm_vision_tower at the folder"
    )


def native_config(config: dict, vision: dict, *, image_token_id: int, pad_token_id: int | None):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text_keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "attention_bias",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    )
    text = LlamaConfig(**{k: config[k] for k in text_keys if config.get(k) is not None})
    tower = {k: v for k, v in vision.items() if k not in ("model_type", "architectures", "transformers_version")}
    vision_config = CLIPVisionConfig(**tower)
    if config.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise ConvertError(
            f"config.json: mm_hidden_size {config['mm_hidden_size']} is not the tower's hidden size "
            f"{vision_config.hidden_size}"
        )
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return LlavaConfig(
        text_config=text,
        vision_config=vision_config,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default",
        image_seq_length=patches,
        pad_token_id=pad_token_id,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _tower_source(src: Path, config: dict, extra: dict) -> Path | None:
    """The folder whose vision_model.* complete the checkpoint, or None where the checkpoint (or `extra`) holds the
    tower; read from the safetensors' headers, before any weight."""
    if any(name.startswith(TOWER_PREFIX) for name in itertools.chain(_safetensors_files(src), extra)):
        return None
    folder = _tower_folder(src, config)
    if folder is None:
        raise ConvertError(
            f"the checkpoint has no vision tower weights and mm_vision_tower "
            f"{config['mm_vision_tower']!r} is not a folder on this machine"
        )
    return folder


def _tensors(src: Path, extra: dict, tower: Path | None, bar: Tracker):
    """The checkpoint's tensors and `extra` (a projector read apart), then the vision_model.* of the tower's folder
    where the checkpoint has none; ``bar`` advances for every tensor read from a file."""
    for name, tensor in itertools.chain(iter_source_tensors(src, bar), extra.items()):
        if not _IGNORED.fullmatch(name):
            yield name, tensor
    if tower is not None:
        for name, tensor in iter_source_tensors(tower, bar):
            if not _TEXT_ONLY.fullmatch(name):
                yield TOWER_PREFIX + name, tensor


def chat_template(bos: bool) -> str:
    """conv_vicuna_v1 as a Jinja chat template; an image part is written as "<image>\\n"."""
    return (
        ("{{- bos_token -}}" if bos else "") + "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns = namespace(system=messages[0]['content'] if messages[0]['content'] is string else "
        "messages[0]['content'][0]['text'], turns=messages[1:]) -%}"
        "{%- else -%}"
        f"{{%- set ns = namespace(system={json.dumps(VICUNA_SYSTEM)}, turns=messages) -%}}"
        "{%- endif -%}"
        "{{- ns.system -}}{{- ' ' -}}"
        "{%- for message in ns.turns -%}"
        "{{- 'USER: ' if message['role'] == 'user' else 'ASSISTANT: ' -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- eos_token if message['role'] == 'assistant' else ' ' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


def image_processor(src: Path, config: dict, vision):
    """LLaVA-1.5's preprocessing: pad to a square with the mean colour ("pad"), then CLIP's resize and crop."""
    from transformers import LlavaImageProcessor

    folder = _tower_folder(src, config)
    settings = (
        _read_json(folder / "preprocessor_config.json")
        if folder and (folder / "preprocessor_config.json").is_file()
        else {}
    )
    size = vision.image_size
    return LlavaImageProcessor(
        do_pad=config.get("image_aspect_ratio", "pad") == "pad",
        size={
            "shortest_edge": settings.get("size", {}).get("shortest_edge", size)
            if isinstance(settings.get("size"), dict)
            else settings.get("size", size)
        },
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=settings.get("image_mean", CLIP_MEAN),
        image_std=settings.get("image_std", CLIP_STD),
        do_convert_rgb=True,
    )


def convert_llava_original(
    src: Path,
    out: Path,
    *,
    vision_tower: Path | None = None,
    force: bool = False,
    seed: int = 0,
    progress: Progress = silent,
) -> Path:
    """Write a transformers LLaVA folder at ``out`` from the original-layout LLaVA-1.5 checkpoint ``src`` (its
    mm_vision_tower replaced by ``vision_tower`` when given); the folder appears whole or not at all, as convert.py's
    do."""
    src = Path(src).expanduser()
    config = read_llava_config(src)
    if vision_tower is not None:
        config["mm_vision_tower"] = str(Path(vision_tower).expanduser())
    return _convert(src, Path(out).expanduser(), config, {}, force, seed, progress)


def convert_llava_pretrain(
    src: Path,
    projector: Path,
    vision_tower: Path,
    out: Path,
    *,
    force: bool = False,
    seed: int = 0,
    progress: Progress = silent,
) -> Path:
    """CoIN's pretrain-only base: the Llama (Vicuna) folder ``src``, LLaVA-1.5's pretrained ``mm_projector.bin`` and
    the CLIP folder ``vision_tower`` (CoIN's --model_name_or_path, --pretrain_mm_mlp_adapter, --vision_tower) as a
    transformers LLaVA folder at ``out``, converted as an original checkpoint holding those weights would be."""
    src = Path(src).expanduser()
    config = pretrain_config(src, Path(vision_tower).expanduser())
    projector_tensors = read_projector(Path(projector).expanduser())
    return _convert(src, Path(out).expanduser(), config, projector_tensors, force, seed, progress)


def _convert(src: Path, out: Path, config: dict, extra: dict, force: bool, seed: int, progress: Progress) -> Path:
    _check_out(src, out, force)
    vision = vision_config_dict(src, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        _write(src, work / "model", config, extra, vision, work / "scratch", seed, progress)
        _replace(work / "model", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _write(
    src: Path, target: Path, config: dict, extra: dict, vision: dict, scratch: Path, seed: int, progress: Progress
) -> None:
    import torch
    from transformers import AddedToken, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    folder, class_name = _tokenizer_folder(src, scratch / "tokenizer")
    tokenizer = _load_tokenizer(folder, class_name)
    vocab_size = int(config["vocab_size"])
    if len(tokenizer) > vocab_size:
        raise ConvertError(f"the tokenizer has {len(tokenizer)} tokens; the language model embeds {vocab_size}")
    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    image_id, pad_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id

    native = native_config(config, vision, image_token_id=image_id, pad_token_id=pad_id)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(native)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items() if name not in tied}
    rules = [(re.compile(p), _rename(t)) for p, t in WEIGHT_RULES]
    tower = _tower_source(src, config, extra)
    total = tensor_count(src) + (tensor_count(tower) if tower is not None else 0)
    with progress(READING, total=total) as bar:
        state = convert_state_dict(_tensors(src, extra, tower, bar), rules, expected)
    dtype = state["lm_head.weight"].dtype if "lm_head.weight" in state else torch.float32
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.to(torch.float32)  # the mean resizing below computes a covariance; the source dtype is restored after
    torch.manual_seed(seed)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    model.to(dtype)
    model.generation_config.pad_token_id = pad_id
    target.mkdir(parents=True)
    model.save_pretrained(target)
    del model, state

    bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    template = chat_template(bos)
    tokenizer.chat_template = template
    processor = LlavaProcessor(
        image_processor=image_processor(src, config, native.vision_config),
        tokenizer=tokenizer,
        patch_size=native.vision_config.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
        chat_template=template,
    )
    processor.save_pretrained(target)


def convert_checkpoint(
    src: Path,
    out: Path,
    *,
    max_tiles: int | None = None,
    projector: Path | None = None,
    vision_tower: Path | None = None,
    force: bool = False,
    progress: Progress = silent,
) -> Path:
    """`dmole convert`: an original-layout LLaVA-1.5 checkpoint or a Llama plus a projector here, an InternVL2
    remote-code one in convert.py."""
    from .convert import convert_internvl_chat

    config_file = Path(src).expanduser() / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None  # the converter below says what is wrong with the folder
    if projector is None and not is_original_llava(config):
        if vision_tower is not None:
            raise ConvertError("--vision-tower applies to LLaVA-1.5 checkpoints (original layout, or with --projector)")
        return convert_internvl_chat(src, out, max_tiles=max_tiles, force=force, progress=progress)
    if max_tiles is not None:
        raise ConvertError("--max-tiles applies to InternVL checkpoints; LLaVA-1.5 takes one image tile")
    if projector is None:
        return convert_llava_original(src, out, vision_tower=vision_tower, force=force, progress=progress)
    if vision_tower is None:
        raise ConvertError("--projector needs --vision-tower: the CLIP folder the projector was pretrained with")
    return convert_llava_pretrain(src, projector, vision_tower, out, force=force, progress=progress)
