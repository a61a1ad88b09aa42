"""`dmole convert`: an InternVL2 / InternVL2.5 remote-code checkpoint folder -> a transformers-native InternVL folder.

The hub checkpoints that D-MoLE builds on (InternVL2-2B and its siblings) ship in the *remote-code* layout:
`config.json` with `model_type: internvl_chat`, InternViT weights under `vision_model.*`, the projector under
`mlp1.*` and an InternLM2 or Qwen2 language model under `language_model.*`, plus Python files that
`trust_remote_code` would run. This module reads only the JSON files, the safetensors and the tokenizer files (no
remote code is imported or executed) and writes the same weights under the names of transformers'
`InternVLForConditionalGeneration`, with a fast tokenizer, the checkpoint's conversation template as a chat template,
and an `InternVLProcessor` that tiles images as the original preprocessing did. See docs/convert.md.

Every source tensor must be consumed and every native parameter filled, with the native shape: a layout this
converter does not know is a one-line `ConvertError`, never a silently wrong model.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import check_creatable
from .errors import UserError
from .progress import Progress, Tracker, silent

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
REQUIRED_TOKENS = (IMG_START, IMG_END, IMG_CONTEXT, TURN_START, TURN_END)
VIDEO = "<video>"

# ImageNet normalisation, as InternVL's build_transform uses.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The conversation templates of InternVL's conversation.py (as copied into D-MoLE's internvl/conversation.py) that
# InternVL2 / InternVL2.5 checkpoints name in config.json "template": all are the MPT separator style, i.e.
#   system_template + sep + (role + message + sep)* + generation role,
# with system_template '<|im_start|>system\n{system_message}', roles '<|im_start|>user\n' / '<|im_start|>assistant\n'.
# They differ in the default system message and in whether sep is '<|im_end|>' or '<|im_end|>\n'.
_INTERNVL2_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
_INTERNVL2_5_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
CONVERSATION_TEMPLATES = {
    # name: (default system message, text after <|im_end|>)
    "internlm2-chat": (_INTERNVL2_SYSTEM, ""),
    "Hermes-2": (_INTERNVL2_SYSTEM, ""),
    "internvl2_5": (_INTERNVL2_5_SYSTEM, "\n"),
}

# Source tensors that are recomputed buffers, not weights (older InternLM2 saves kept them).
_IGNORED = re.compile(r"language_model\..*rotary_emb\.inv_freq")


READING = "convert: reading the weights"  # the progress bar over the checkpoint's tensors


class ConvertError(UserError):
    """The source folder is not a checkpoint this converter can turn into a native InternVL folder."""


# ---- the source folder -------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConvertError(f"{path} is not valid JSON ({error})") from None


def read_source_config(src: Path) -> dict:
    """The remote-code config.json, checked to be an InternVL chat checkpoint."""
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder")
    config = _read_json(src / "config.json")
    if not isinstance(config, dict):
        raise ConvertError(f"{src / 'config.json'}: expected a JSON object, not {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type != "internvl_chat":
        hint = " (already a native InternVL folder)" if model_type == "internvl" else ""
        raise ConvertError(
            f"{src / 'config.json'}: model_type is {model_type!r}{hint}; expected 'internvl_chat' "
            f"(an InternVL2 / InternVL2.5 remote-code checkpoint)"
        )
    for key in ("vision_config", "llm_config"):
        if not isinstance(config.get(key), dict):
            raise ConvertError(f"{src / 'config.json'}: no {key}")
    vocab_size = config["llm_config"].get("vocab_size")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConvertError(
            f"{src / 'config.json'}: llm_config.vocab_size must be a positive integer, not {vocab_size!r}"
        )
    return config


def lm_kind(llm: dict) -> str:
    """'internlm2' (fused wqkv, renamed layers) or 'hf' (Qwen2 / Llama: native names under language_model.)."""
    model_type = llm.get("model_type")
    arch = (llm.get("architectures") or [""])[0]
    if model_type == "internlm2" or arch == "InternLM2ForCausalLM":
        return "internlm2"
    if model_type in ("qwen2", "llama") or arch in ("Qwen2ForCausalLM", "LlamaForCausalLM"):
        return "hf"
    raise ConvertError(f"language model {model_type or arch!r} is not supported (InternLM2, Qwen2 or Llama)")


def _safetensors_files(src: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file that holds it (one file, or shards listed in the index)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConvertError(f"{index}: no weight_map")
        files = {name: src / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise ConvertError(f"{index} lists {file.name}, which is missing")
        return files
    single = src / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        try:
            with safe_open(single, framework="pt") as handle:
                return {name: single for name in handle.keys()}  # noqa: SIM118  (safe_open: no __iter__)
        except Exception as error:
            raise ConvertError(f"{single} is not a readable safetensors file ({error})") from None
    pickles = sorted(p.name for p in src.glob("pytorch_model*.bin"))
    raise ConvertError(
        f"{src}: no model.safetensors or model.safetensors.index.json"
        + (f" ({', '.join(pickles)} found; pickled weights are not read)" if pickles else "")
    )


def tensor_count(src: Path) -> int:
    """How many tensors `iter_source_tensors` reads from the checkpoint."""
    return len(_safetensors_files(src))


def iter_source_tensors(src: Path, bar: Tracker | None = None) -> Iterator[tuple[str, object]]:
    """(name, tensor) for every tensor of the checkpoint, file by file; ``bar`` advances by one for each."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name, file in _safetensors_files(src).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        try:
            handle = safe_open(file, framework="pt")
        except Exception as error:
            raise ConvertError(f"{file} is not a readable safetensors file ({error})") from None
        with handle:
            present = set(handle.keys())
            for name in names:
                if name not in present:
                    raise ConvertError(f"{file.name} has no tensor {name!r} (the index says it does)")
                yield name, handle.get_tensor(name)
                if bar is not None:
                    bar.advance(1)


# ---- configs -----------------------------------------------------------------------------------------------------
def _dtype(config: dict) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in ("float32", "float16", "bfloat16") else None


def _need(section: dict, key: str, where: str):
    if key not in section:
        raise ConvertError(f"config.json: {where} has no {key!r}")
    return section[key]


def _vision_config(vision: dict, dtype: str | None):
    from transformers import InternVLVisionConfig

    # Defaults are those of InternVL's InternVisionConfig, for keys an older config.json leaves out.
    qk_norm = bool(vision.get("qk_normalization", True))
    eps = float(vision.get("layer_norm_eps", 1e-6))
    if qk_norm and eps != 1e-6:
        raise ConvertError(f"vision qk_normalization with layer_norm_eps={eps}: the native q/k norms use 1e-6")
    norm_type = vision.get("norm_type", "rms_norm")
    if norm_type not in ("rms_norm", "layer_norm"):
        raise ConvertError(f"vision norm_type {norm_type!r} is not supported (rms_norm or layer_norm)")
    where = "vision_config"
    return InternVLVisionConfig(
        hidden_size=_need(vision, "hidden_size", where),
        num_hidden_layers=_need(vision, "num_hidden_layers", where),
        num_attention_heads=_need(vision, "num_attention_heads", where),
        intermediate_size=_need(vision, "intermediate_size", where),
        image_size=_need(vision, "image_size", where),
        patch_size=_need(vision, "patch_size", where),
        num_channels=vision.get("num_channels", 3),
        hidden_act=vision.get("hidden_act", "gelu"),
        attention_bias=bool(vision.get("qkv_bias", False)),
        use_qk_norm=qk_norm,
        norm_type=norm_type,
        layer_norm_eps=eps,
        layer_scale_init_value=float(vision.get("initializer_factor", 0.1)),
        initializer_range=float(vision.get("initializer_range", 0.02)),
        attention_dropout=0.0,
        projection_dropout=0.0,
        hidden_dropout_prob=0.0,
        use_absolute_position_embeddings=True,
        # InternViT has no norm after its last layer; use_mean_pooling=True makes the native one an Identity.
        use_mean_pooling=True,
        dtype=dtype,
    )


def _rope(llm: dict, default_theta: float) -> dict:
    scaling = dict(llm.get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    return {"rope_type": rope_type, "rope_theta": float(llm.get("rope_theta", default_theta)), **scaling}


def _text_config(llm: dict, kind: str, dtype: str | None):
    from transformers import LlamaConfig, Qwen2Config

    where = "llm_config"
    heads = _need(llm, "num_attention_heads", where)
    hidden = _need(llm, "hidden_size", where)
    if hidden % heads:
        raise ConvertError(f"llm_config: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    common = dict(
        vocab_size=_need(llm, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_need(llm, "intermediate_size", where),
        num_hidden_layers=_need(llm, "num_hidden_layers", where),
        num_attention_heads=heads,
        num_key_value_heads=llm.get("num_key_value_heads") or heads,
        hidden_act=llm.get("hidden_act", "silu"),
        max_position_embeddings=llm.get("max_position_embeddings", 2048),
        rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)),
        initializer_range=float(llm.get("initializer_range", 0.02)),
        bos_token_id=llm.get("bos_token_id"),
        eos_token_id=llm.get("eos_token_id"),
        pad_token_id=llm.get("pad_token_id"),
        # InternVLChatConfig unties the LM head for every model size.
        tie_word_embeddings=False,
        rope_parameters=_rope(llm, 10000.0),
        dtype=dtype,
    )
    if kind == "internlm2":
        if llm.get("num_key_value_heads") and heads % llm["num_key_value_heads"]:
            raise ConvertError(f"llm_config: {heads} heads are not a multiple of {llm['num_key_value_heads']} kv heads")
        # InternLM2's `bias` (default True in InternLM2Config) puts biases on wqkv and wo, never on the MLP.
        return LlamaConfig(
            **common, head_dim=hidden // heads, attention_bias=bool(llm.get("bias", True)), mlp_bias=False
        )
    if llm.get("model_type") == "llama" or (llm.get("architectures") or [""])[0] == "LlamaForCausalLM":
        return LlamaConfig(
            **common,
            head_dim=llm.get("head_dim") or hidden // heads,
            attention_bias=bool(llm.get("attention_bias", False)),
            mlp_bias=bool(llm.get("mlp_bias", False)),
        )
    extra = {key: llm[key] for key in ("use_sliding_window", "sliding_window", "max_window_layers") if key in llm}
    return Qwen2Config(**common, **extra)


def image_size(config: dict) -> int:
    """The tile side the model was trained on: force_image_size, else the ViT's image_size."""
    size = config.get("force_image_size") or config["vision_config"].get("image_size")
    if not isinstance(size, int) or size <= 0:
        raise ConvertError(f"config.json: no usable image size (force_image_size / vision_config.image_size: {size!r})")
    return size


def native_config(config: dict, image_token_id: int):
    """The transformers InternVLConfig equivalent to the remote-code config."""
    from transformers import InternVLConfig

    if config.get("ps_version", "v1") != "v2":
        raise ConvertError(
            f"ps_version {config.get('ps_version', 'v1')!r}: only 'v2' pixel shuffle has a native "
            f"equivalent ('v1' leaves the feature map transposed)"
        )
    ratio = float(config.get("downsample_ratio", 0.5))
    if ratio <= 0 or round(1 / ratio) != 1 / ratio:
        raise ConvertError(f"downsample_ratio {ratio} is not 1/n")
    dtype = _dtype(config) or _dtype(config["llm_config"])
    try:
        vision = _vision_config(config["vision_config"], dtype)
        text = _text_config(config["llm_config"], lm_kind(config["llm_config"]), dtype)
    except (TypeError, ValueError) as error:  # a value of the wrong type or range in config.json
        raise ConvertError(f"config.json: {str(error).splitlines()[0]}") from None
    side = image_size(config)
    patch = vision.patch_size[0]
    if side % patch or (side // patch) % round(1 / ratio):
        raise ConvertError(f"image size {side} does not split into {patch}-pixel patches merged by {round(1 / ratio)}")
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=image_seq_length(config),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("select_layer", -1)),
        vision_feature_select_strategy="default",  # drop the CLS token, as extract_feature does
        tie_word_embeddings=False,
        architectures=["InternVLForConditionalGeneration"],
        dtype=dtype,
    )


def image_seq_length(config: dict) -> int:
    """Context tokens per tile: (image_size / patch)^2 * downsample_ratio^2 (InternVLChatModel.num_image_token)."""
    patch = config["vision_config"].get("patch_size", 14)
    return int((image_size(config) // patch) ** 2 * float(config.get("downsample_ratio", 0.5)) ** 2)


# ---- weights -----------------------------------------------------------------------------------------------------
Rule = tuple[re.Pattern, Callable[[re.Match, object], dict[str, object]]]


def _rename(template: str) -> Callable[[re.Match, object], dict[str, object]]:
    return lambda m, t: {m.expand(template): t}


def _split_equal(template: str) -> Callable[[re.Match, object], dict[str, object]]:
    """InternViT's attn.qkv: rows are [q; k; v] (reshape(B, N, 3, heads, head_dim) in _naive_attn)."""

    def split(m: re.Match, tensor) -> dict[str, object]:
        if tensor.shape[0] % 3:
            raise ConvertError(f"{m.group(0)}: {tensor.shape[0]} rows do not split into q, k, v")
        q, k, v = tensor.chunk(3, dim=0)
        return {m.expand(template.replace("{}", part)): x.contiguous() for part, x in zip("qkv", (q, k, v))}

    return split


def split_wqkv(tensor, heads: int, kv_heads: int, head_dim: int):
    """InternLM2's fused wqkv -> (q, k, v). Rows are grouped per kv head: for each of the kv heads, its
    heads // kv_heads query heads, then its key head, then its value head, each head_dim rows
    (InternLM2Attention: view(b, n, kv_heads, groups + 2, head_dim); q = [..., :groups, :], k = [..., -2, :],
    v = [..., -1, :]); query head h * groups + g keeps its place, which is the order repeat_kv expects."""
    groups = heads // kv_heads
    if tensor.shape[0] != kv_heads * (groups + 2) * head_dim:
        raise ConvertError(
            f"wqkv has {tensor.shape[0]} rows; {heads} heads and {kv_heads} kv heads of "
            f"{head_dim} need {(heads + 2 * kv_heads) * head_dim}"
        )
    grouped = tensor.reshape(kv_heads, groups + 2, head_dim, *tensor.shape[1:])
    q = grouped[:, :groups].reshape(heads * head_dim, *tensor.shape[1:])
    k = grouped[:, groups].reshape(kv_heads * head_dim, *tensor.shape[1:])
    v = grouped[:, groups + 1].reshape(kv_heads * head_dim, *tensor.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def _split_wqkv(text) -> Callable[[re.Match, object], dict[str, object]]:
    def split(m: re.Match, tensor) -> dict[str, object]:
        q, k, v = split_wqkv(tensor, text.num_attention_heads, text.num_key_value_heads, text.head_dim)
        base = f"model.language_model.layers.{m.group(1)}.self_attn"
        return {f"{base}.{p}_proj.{m.group(2)}": x for p, x in zip("qkv", (q, k, v))}

    return split


VISION_RULES = [
    (r"vision_model\.embeddings\.class_embedding", "model.vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    (
        r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
        r"model.vision_tower.embeddings.patch_embeddings.projection.\1",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.attention.projection_layer.\2",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.weight",
        r"model.vision_tower.encoder.layer.\1.attention.\2.weight",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.mlp.\2.\3",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.layernorm_before.\2",
    ),
    (
        r"vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)",
        r"model.vision_tower.encoder.layer.\1.layernorm_after.\2",
    ),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls([12])", r"model.vision_tower.encoder.layer.\1.lambda_\2"),
    # the projector: nn.Sequential(LayerNorm, Linear, GELU, Linear)
    (r"mlp1\.0\.(weight|bias)", r"model.multi_modal_projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
]

INTERNLM2_RULES = [
    (r"language_model\.model\.tok_embeddings\.weight", "model.language_model.embed_tokens.weight"),
    (
        r"language_model\.model\.layers\.(\d+)\.attention\.wo\.(weight|bias)",
        r"model.language_model.layers.\1.self_attn.o_proj.\2",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.weight",
        r"model.language_model.layers.\1.mlp.gate_proj.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.weight",
        r"model.language_model.layers.\1.mlp.up_proj.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.weight",
        r"model.language_model.layers.\1.mlp.down_proj.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.attention_norm\.weight",
        r"model.language_model.layers.\1.input_layernorm.weight",
    ),
    (
        r"language_model\.model\.layers\.(\d+)\.ffn_norm\.weight",
        r"model.language_model.layers.\1.post_attention_layernorm.weight",
    ),
    (r"language_model\.model\.norm\.weight", "model.language_model.norm.weight"),
    (r"language_model\.output\.weight", "lm_head.weight"),
]

HF_LM_RULES = [
    (r"language_model\.model\.(.+)", r"model.language_model.\1"),
    (r"language_model\.lm_head\.weight", "lm_head.weight"),
]


def weight_rules(kind: str, text_config) -> list[Rule]:
    """Ordered (source-name pattern, producer of native tensors); the first full match wins."""
    rules: list[Rule] = [(re.compile(p), _rename(t)) for p, t in VISION_RULES]
    rules.append(
        (
            re.compile(r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)"),
            _split_equal(r"model.vision_tower.encoder.layer.\1.attention.{}_proj.\2"),
        )
    )
    if kind == "internlm2":
        rules.append(
            (
                re.compile(r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)"),
                _split_wqkv(text_config),
            )
        )
        rules += [(re.compile(p), _rename(t)) for p, t in INTERNLM2_RULES]
    else:
        rules += [(re.compile(p), _rename(t)) for p, t in HF_LM_RULES]
    return rules


def convert_state_dict(tensors, rules: list[Rule], expected: dict[str, tuple]) -> dict[str, object]:
    """Native name -> tensor for every (name, tensor) of the source; `expected` maps each native parameter to its
    shape. Raises ConvertError on a tensor no rule maps, one that maps outside the native model or with the wrong
    shape, two sources for one parameter, or a native parameter left empty."""
    converted: dict[str, object] = {}
    origin: dict[str, str] = {}
    for name, tensor in tensors:
        if _IGNORED.fullmatch(name):
            continue
        for pattern, produce in rules:
            if m := pattern.fullmatch(name):
                produced = produce(m, tensor)
                break
        else:
            raise ConvertError(
                f"unexpected tensor {name!r} {tuple(tensor.shape)}: no native InternVL parameter corresponds to it"
            )
        for native, value in produced.items():
            if native not in expected:
                raise ConvertError(
                    f"tensor {name!r} maps to {native!r}, which the native model does not have "
                    f"(config.json and the weights disagree)"
                )
            if tuple(value.shape) != expected[native]:
                raise ConvertError(
                    f"tensor {name!r} gives {native} shape {tuple(value.shape)}; the config says {expected[native]}"
                )
            if native in converted:
                raise ConvertError(f"{native} is produced by both {origin[native]!r} and {name!r}")
            converted[native], origin[native] = value, name
    missing = sorted(set(expected) - set(converted))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConvertError(f"the checkpoint has no tensor for {', '.join(missing[:3])}{more}")
    return converted


# ---- tokenizer, template, processor ------------------------------------------------------------------------------
# Keys of a slow / remote tokenizer_config.json that mean nothing to the fast tokenizer (or would pull remote code).
_DROPPED_TOKENIZER_KEYS = {
    "auto_map",
    "sp_model_kwargs",
    "decode_with_prefix_space",
    "chat_template",
    "tokenizer_file",
    "name_or_path",
}


def _tokenizer_folder(src: Path, scratch: Path) -> tuple[Path, str | None]:
    """A copy of the source's tokenizer files with a tokenizer_config.json stripped of remote code; the
    transformers tokenizer class to load it with (None: the generic fast backend)."""
    import transformers

    scratch.mkdir(parents=True)
    if (src / "tokenizer.json").is_file():
        files = ["tokenizer.json"]
    elif (src / "tokenizer.model").is_file():
        files = ["tokenizer.model"]
    elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        files = ["vocab.json", "merges.txt"]
    else:
        raise ConvertError(f"{src}: no tokenizer (tokenizer.json, tokenizer.model, or vocab.json + merges.txt)")
    for name in files + ["special_tokens_map.json", "added_tokens.json"]:
        if (src / name).is_file():
            shutil.copyfile(src / name, scratch / name)
    settings = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    settings = {key: value for key, value in settings.items() if key not in _DROPPED_TOKENIZER_KEYS}
    class_name = settings.pop("tokenizer_class", None)
    # A class transformers ships (Qwen2Tokenizer, ...) is kept; InternLM2's remote classes are not.
    if class_name and not hasattr(transformers, class_name):
        class_name = None
    if class_name:
        settings["tokenizer_class"] = class_name
    (scratch / "tokenizer_config.json").write_text(json.dumps(settings, ensure_ascii=False, indent=2), encoding="utf-8")
    return scratch, class_name


def _load_tokenizer(folder: Path, class_name: str | None, **overrides):
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    try:
        if class_name:
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **overrides)
        # A sentencepiece tokenizer.model is converted by following the model's own normalizer spec (dummy prefix,
        # byte fallback, user-defined pieces), so it encodes like SentencePieceProcessor.encode.
        return TokenizersBackend.from_pretrained(folder, **overrides)
    except ConvertError:
        raise
    except ImportError as error:
        raise ConvertError(f"reading the tokenizer needs a missing package: {error}") from None
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0]
        raise ConvertError(f"the tokenizer does not load: {type(error).__name__}: {first_line}") from None


def build_tokenizer(src: Path, scratch: Path, vocab_size: int):
    """The fast tokenizer: the source's vocabulary and ids, <|im_end|> as eos (the end of every turn, and what
    InternVL's chat() stops on), and the attribute names InternVLProcessor reads."""
    folder, class_name = _tokenizer_folder(src, scratch)
    probe = _load_tokenizer(folder, class_name)
    vocab = probe.get_vocab()
    for token in REQUIRED_TOKENS:
        if token not in vocab:
            raise ConvertError(f"the tokenizer has no {token} token")
    # InternVLProcessor also needs a video token (a distinct string: it counts it in every prompt). InternVL2
    # tokenizers have none, so <video> is added after the vocabulary: its id is past the language model's
    # embedding, so it must not be fed to the model (dmole never feeds video; InternVL2 took video as frames).
    extra = {
        "start_image_token": IMG_START,
        "end_image_token": IMG_END,
        "context_image_token": IMG_CONTEXT,
        "video_token": VIDEO,
    }
    pad = probe.pad_token or probe.eos_token or TURN_END
    tokenizer = _load_tokenizer(folder, class_name, extra_special_tokens=extra, eos_token=TURN_END, pad_token=pad)

    settings = _read_json(folder / "tokenizer_config.json")
    for token_id, entry in (settings.get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else str(entry)
        got = tokenizer.convert_tokens_to_ids(content)
        if got != int(token_id):
            raise ConvertError(
                f"the converted tokenizer gives {content!r} id {got}; the source tokenizer_config.json says {token_id}"
            )
    for token in REQUIRED_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ConvertError(f"{token} does not encode as one token ({ids})")
    for token in REQUIRED_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) >= vocab_size:
            raise ConvertError(
                f"{token} has id {tokenizer.convert_tokens_to_ids(token)}, past the language model's "
                f"{vocab_size} embeddings"
            )
    allowed = vocab_size + (VIDEO not in vocab)
    if len(tokenizer) > allowed:
        raise ConvertError(f"the tokenizer has {len(tokenizer)} tokens; the language model embeds {vocab_size}")
    return tokenizer


def adds_bos(tokenizer) -> bool:
    """Whether plain encoding starts with BOS (InternLM2's tokenizer does; Qwen2's has none)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def chat_template(template: str | None, *, bos: bool) -> str:
    """The checkpoint's conversation template (config.json "template") as a Jinja chat template.

    Rendering follows InternVL's Conversation.get_prompt (MPT style) as model.chat() builds prompts: the system
    turn always comes first (the default system message unless messages[0] is a system message), an image part
    is written as '<IMG_CONTEXT>\\n' before the text (InternVL prefixes '<image>\\n'; the native processor expands
    <IMG_CONTEXT> into <img><IMG_CONTEXT>*n</img>), and the generation prompt is '<|im_start|>assistant\\n'.
    With `bos`, the prompt starts with the BOS token that InternLM2's tokenizer adds when InternVL tokenizes it.
    """
    if template not in CONVERSATION_TEMPLATES:
        raise ConvertError(f"conversation template {template!r} is not supported ({', '.join(CONVERSATION_TEMPLATES)})")
    system, after = CONVERSATION_TEMPLATES[template]
    lines = [
        "{{- bos_token -}}" if bos else "",
        "{%- macro render(content) -%}",
        "  {%- if content is string -%}{{- content -}}",
        "  {%- else -%}",
        "    {%- for part in content -%}",
        f"      {{%- if part['type'] == 'image' -%}}{{{{- {_jinja(IMG_CONTEXT + chr(10))} -}}}}",
        "      {%- elif part['type'] == 'text' -%}{{- part['text'] -}}",
        "      {%- endif -%}",
        "    {%- endfor -%}",
        "  {%- endif -%}",
        "{%- endmacro -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "  {%- set system_message = render(messages[0]['content']) -%}",
        "  {%- set turns = messages[1:] -%}",
        "{%- else -%}",
        f"  {{%- set system_message = {_jinja(system)} -%}}",
        "  {%- set turns = messages -%}",
        "{%- endif -%}",
        f"{{{{- {_jinja(TURN_START + 'system' + chr(10))} + system_message + {_jinja(TURN_END + after)} -}}}}",
        "{%- for message in turns -%}",
        f"  {{{{- {_jinja(TURN_START)} + message['role'] + {_jinja(chr(10))} + render(message['content']) + "
        f"{_jinja(TURN_END + after)} -}}}}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{- {_jinja(TURN_START + 'assistant' + chr(10))} -}}}}{{%- endif -%}}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _jinja(text: str) -> str:
    """A Jinja string literal (JSON escapes are Jinja escapes)."""
    return json.dumps(text, ensure_ascii=False)


def image_processor(config: dict, max_tiles: int | None):
    """InternVL's load_image preprocessing: bicubic resize to square tiles, ImageNet normalisation, and with
    dynamic_image_size the closest-aspect-ratio tiling (min..max tiles) plus a thumbnail when there are several."""
    from transformers import GotOcr2ImageProcessorPil

    side = image_size(config)
    dynamic = bool(config.get("dynamic_image_size", False))
    if dynamic and not config.get("use_thumbnail", False):
        raise ConvertError(
            "dynamic_image_size without use_thumbnail: the native image processor always adds the thumbnail tile"
        )
    tiles = max_tiles if max_tiles is not None else int(config.get("max_dynamic_patch", 6))
    if dynamic and tiles < int(config.get("min_dynamic_patch", 1)):
        raise ConvertError(
            f"at most {tiles} tiles is fewer than the checkpoint's min_dynamic_patch {config.get('min_dynamic_patch')}"
        )
    return GotOcr2ImageProcessorPil(
        size={"height": side, "width": side},
        crop_to_patches=dynamic,
        min_patches=int(config.get("min_dynamic_patch", 1)),
        # max_patches=1 keeps one tile even where the processor asks for tiling (InternVLProcessor's default).
        max_patches=tiles if dynamic else 1,
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )


# ---- the conversion ----------------------------------------------------------------------------------------------
def _check_out(src: Path, out: Path, force: bool) -> None:
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ConvertError(f"OUT {out} must not be SRC or inside it")
    if out.resolve() in src.resolve().parents:
        raise ConvertError(f"OUT {out} must not contain SRC")
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{out} exists and is not a folder")
    check_creatable(out, "OUT")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConvertError(f"{out} is not empty; pass --force to replace it")


def convert_internvl_chat(
    src: Path, out: Path, *, max_tiles: int | None = None, force: bool = False, progress: Progress = silent
) -> Path:
    """Write a transformers-native InternVL folder at `out` from the remote-code InternVL2 checkpoint `src`.

    `max_tiles` caps the image tiles per image (default: the checkpoint's max_dynamic_patch). The folder is
    assembled next to `out` and renamed into place only when complete; `force` replaces a non-empty `out`.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if max_tiles is not None and max_tiles < 1:
        raise ConvertError(f"--max-tiles must be at least 1 (got {max_tiles})")
    config = read_source_config(src)
    _check_out(src, out, force)
    kind = lm_kind(config["llm_config"])
    template_name = config.get("template")
    if template_name not in CONVERSATION_TEMPLATES:  # before any heavy work
        raise ConvertError(
            f"conversation template {template_name!r} is not supported ({', '.join(CONVERSATION_TEMPLATES)})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        _write(src, work / "model", config, kind, max_tiles, work / "scratch", progress)
        _replace(work / "model", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _write(
    src: Path, target: Path, config: dict, kind: str, max_tiles: int | None, scratch: Path, progress: Progress
) -> None:
    import torch
    from transformers import GenerationConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.utils import logging as transformers_logging

    from .models.processor import build_processor

    transformers_logging.disable_progress_bar()  # the one-line summary is the command's output

    vocab_size = config["llm_config"]["vocab_size"]  # checked by read_source_config
    tokenizer = build_tokenizer(src, scratch / "tokenizer", vocab_size)
    native = native_config(config, image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT))

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(native)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items() if name not in tied}
    rules = weight_rules(kind, native.text_config)
    with progress(READING, total=tensor_count(src)) as bar:
        state = convert_state_dict(iter_source_tensors(src, bar), rules, expected)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.convert_tokens_to_ids(TURN_END),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    target.mkdir(parents=True)
    model.save_pretrained(target)
    del model, state

    template = chat_template(config.get("template"), bos=adds_bos(tokenizer))
    tokenizer.chat_template = template
    processor = build_processor(
        InternVLProcessor,
        image_processor=image_processor(config, max_tiles),
        tokenizer=tokenizer,
        image_seq_length=image_seq_length(config),
        chat_template=template,
    )
    processor.save_pretrained(target)


def _replace(built: Path, out: Path) -> None:
    """Rename the finished folder onto `out`, moving an existing `out` aside first and deleting it after."""
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(aside / out.name)
        try:
            built.rename(out)
        except BaseException:
            (aside / out.name).rename(out)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        built.rename(out)
