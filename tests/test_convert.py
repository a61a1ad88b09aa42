"""`dmole convert`: a tiny InternVL2 checkpoint in the remote-code layout, written here independently of the
converter, turned into a native InternVL folder and checked against reference computations."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import RecordedProgress, safetensors_count
from dmole.artifacts.io import read_json
from dmole.cli.app import app
from dmole.stages.convert import READING, ConvertError, chat_template, convert_internvl_chat

torch.set_num_threads(1)
runner = CliRunner()

# InternLM2 variant: 4 query heads share 2 kv heads of 8 dims; Qwen2 variant: 4 heads, 1 kv head.
LM = dict(hidden=32, heads=4, kv=2, inter=48, layers=2)
VIT = dict(hidden=16, heads=2, inter=32, layers=2, image=32, patch=8)
HEAD_DIM = LM["hidden"] // LM["heads"]
TOKENS_PER_TILE = (VIT["image"] // VIT["patch"]) ** 2 // 4  # 2x2 pixel-shuffle merge
REMOTE_CODE = "raise RuntimeError('remote code must not run')\n"
INTERNVL2_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
INTERNVL2_5_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
IMAGE_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>"]


# ---- an independent writer of the remote-code layout ------------------------------------------------------------
def _special(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
        "special": True,
    }


def _sentencepiece_tokenizer(folder: Path) -> int:
    """A tiny InternLM2-style sentencepiece BPE (byte fallback, no dummy prefix); returns the LM vocab size."""
    import sentencepiece as spm

    text = [
        "the quick brown fox jumps over the lazy dog",
        "a picture of a cat on a mat",
        "what is in the image?",
        "describe the scene in one sentence",
        "answer the question using a single word",
    ] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    base = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    added = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "<|im_start|>", 4: "<|im_end|>"}
    added |= {base + i: token for i, token in enumerate(IMAGE_TOKENS)}
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "InternLM2Tokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 4096,
                "added_tokens_decoder": {str(i): _special(t) for i, t in added.items()},
            }
        )
    )
    (folder / "tokenization_internlm2.py").write_text(REMOTE_CODE)
    return base + len(IMAGE_TOKENS)


def _bpe_tokenizer(folder: Path) -> int:
    """A tiny Qwen2-style byte-level BPE (vocab.json + merges.txt); returns an LM vocab padded past it."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable} | {
        b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)
    }
    vocab = {chars[b]: b for b in range(256)} | {"th": 256, "the": 257, "Ġthe": 258}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e\nĠ the\n")
    added = {259 + i: t for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS])}
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": 4096,
                "added_tokens_decoder": {str(i): _special(t) for i, t in added.items()},
            }
        )
    )
    return max(added) + 1 + 6  # embeddings padded past the tokenizer, as Qwen2's are


def _vision_tensors(g: torch.Generator, *, bias: bool, qk_norm: bool, layer_norm: bool) -> dict:
    d, n = VIT["hidden"], (VIT["image"] // VIT["patch"]) ** 2
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    t = {
        "vision_model.embeddings.class_embedding": r(1, 1, d),
        "vision_model.embeddings.position_embedding": r(1, n + 1, d),
        "vision_model.embeddings.patch_embedding.weight": r(d, 3, VIT["patch"], VIT["patch"]),
        "vision_model.embeddings.patch_embedding.bias": r(d),
    }
    for i in range(VIT["layers"]):
        p = f"vision_model.encoder.layers.{i}."
        t |= {
            p + "attn.qkv.weight": r(3 * d, d),
            p + "attn.proj.weight": r(d, d),
            p + "attn.proj.bias": r(d),
            p + "mlp.fc1.weight": r(VIT["inter"], d),
            p + "mlp.fc1.bias": r(VIT["inter"]),
            p + "mlp.fc2.weight": r(d, VIT["inter"]),
            p + "mlp.fc2.bias": r(d),
            p + "norm1.weight": 1 + r(d),
            p + "norm2.weight": 1 + r(d),
            p + "ls1": r(d),
            p + "ls2": r(d),
        }
        if bias:
            t[p + "attn.qkv.bias"] = r(3 * d)
        if qk_norm:
            t |= {p + "attn.q_norm.weight": 1 + r(d), p + "attn.k_norm.weight": 1 + r(d)}
        if layer_norm:
            t |= {p + "norm1.bias": r(d), p + "norm2.bias": r(d)}
    merged = 4 * d
    t |= {
        "mlp1.0.weight": 1 + r(merged),
        "mlp1.0.bias": r(merged),
        "mlp1.1.weight": r(LM["hidden"], merged),
        "mlp1.1.bias": r(LM["hidden"]),
        "mlp1.3.weight": r(LM["hidden"], LM["hidden"]),
        "mlp1.3.bias": r(LM["hidden"]),
    }
    return t


def _internlm2_tensors(g: torch.Generator, vocab: int) -> dict:
    h, fused = LM["hidden"], (LM["heads"] + 2 * LM["kv"]) * HEAD_DIM
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    t = {
        "language_model.model.tok_embeddings.weight": r(vocab, h),
        "language_model.model.norm.weight": 1 + r(h),
        "language_model.output.weight": r(vocab, h),
    }
    for i in range(LM["layers"]):
        p = f"language_model.model.layers.{i}."
        t |= {
            p + "attention.wqkv.weight": r(fused, h),
            p + "attention.wo.weight": r(h, LM["heads"] * HEAD_DIM),
            p + "feed_forward.w1.weight": r(LM["inter"], h),
            p + "feed_forward.w3.weight": r(LM["inter"], h),
            p + "feed_forward.w2.weight": r(h, LM["inter"]),
            p + "attention_norm.weight": 1 + r(h),
            p + "ffn_norm.weight": 1 + r(h),
        }
    return t


def _qwen2_tensors(g: torch.Generator, vocab: int) -> dict:
    h, kv = LM["hidden"], 1
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    t = {
        "language_model.model.embed_tokens.weight": r(vocab, h),
        "language_model.model.norm.weight": 1 + r(h),
        "language_model.lm_head.weight": r(vocab, h),
    }
    for i in range(LM["layers"]):
        p = f"language_model.model.layers.{i}."
        t |= {
            p + "self_attn.q_proj.weight": r(h, h),
            p + "self_attn.q_proj.bias": r(h),
            p + "self_attn.k_proj.weight": r(kv * HEAD_DIM, h),
            p + "self_attn.k_proj.bias": r(kv * HEAD_DIM),
            p + "self_attn.v_proj.weight": r(kv * HEAD_DIM, h),
            p + "self_attn.v_proj.bias": r(kv * HEAD_DIM),
            p + "self_attn.o_proj.weight": r(h, h),
            p + "mlp.gate_proj.weight": r(LM["inter"], h),
            p + "mlp.up_proj.weight": r(LM["inter"], h),
            p + "mlp.down_proj.weight": r(h, LM["inter"]),
            p + "input_layernorm.weight": 1 + r(h),
            p + "post_attention_layernorm.weight": 1 + r(h),
        }
    return t


def write_remote_checkpoint(folder: Path, lm: str = "internlm2", seed: int = 0) -> Path:
    """An InternVL2-layout folder: config.json, safetensors (sharded for InternLM2), tokenizer, remote .py files."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    internlm2 = lm == "internlm2"
    vocab = _sentencepiece_tokenizer(folder) if internlm2 else _bpe_tokenizer(folder)
    vision = dict(
        architectures=["InternVisionModel"],
        model_type="intern_vit_6b",
        hidden_size=VIT["hidden"],
        num_attention_heads=VIT["heads"],
        intermediate_size=VIT["inter"],
        num_hidden_layers=VIT["layers"],
        image_size=VIT["image"],
        patch_size=VIT["patch"],
        num_channels=3,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        initializer_factor=1.0,
        drop_path_rate=0.0,
        use_flash_attn=False,
        # InternViT-300M (InternVL2-2B): LayerNorm, qkv bias; InternViT-6B style: RMSNorm, qk norm
        **(
            dict(norm_type="layer_norm", qkv_bias=True, qk_normalization=False)
            if internlm2
            else dict(norm_type="rms_norm", qkv_bias=False, qk_normalization=True)
        ),
    )
    if internlm2:
        llm = dict(
            architectures=["InternLM2ForCausalLM"],
            model_type="internlm2",
            bias=False,
            num_key_value_heads=LM["kv"],
            rope_theta=1000000,
            rope_scaling={"type": "dynamic", "factor": 2.0},
            auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"},
        )
        tensors = _vision_tensors(g, bias=True, qk_norm=False, layer_norm=True) | _internlm2_tensors(g, vocab)
    else:
        llm = dict(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            num_key_value_heads=1,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
            use_sliding_window=False,
        )
        tensors = _vision_tensors(g, bias=False, qk_norm=True, layer_norm=False) | _qwen2_tensors(g, vocab)
    llm |= dict(
        hidden_size=LM["hidden"],
        intermediate_size=LM["inter"],
        num_hidden_layers=LM["layers"],
        num_attention_heads=LM["heads"],
        vocab_size=vocab,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    config = dict(
        architectures=["InternVLChatModel"],
        model_type="internvl_chat",
        auto_map={"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        downsample_ratio=0.5,
        dynamic_image_size=True,
        force_image_size=VIT["image"],
        min_dynamic_patch=1,
        max_dynamic_patch=6,
        ps_version="v2",
        select_layer=-1,
        template="internlm2-chat" if internlm2 else "Hermes-2",
        use_thumbnail=True,
        use_backbone_lora=0,
        use_llm_lora=0,
        torch_dtype="float32",
        llm_config=llm,
        vision_config=vision,
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "modeling_internvl_chat.py").write_text(REMOTE_CODE)
    if internlm2:  # two shards and an index
        names = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for file, part in shards.items():
            save_file({n: tensors[n].contiguous() for n in part}, folder / file)
        weight_map = {n: file for file, part in shards.items() for n in part}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file({n: t.contiguous() for n, t in tensors.items()}, folder / "model.safetensors")
    return folder


def source_tensors(folder: Path) -> dict:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


# ---- independent references ---------------------------------------------------------------------------------------
def reference_qkv_rows(heads: int, kv: int, head_dim: int) -> tuple[list[int], list[int], list[int]]:
    """Row indices of the fused wqkv for q, k and v, listed head by head: kv head j owns a block of
    (heads/kv + 2) * head_dim rows, its query heads first, then its key head, then its value head."""
    groups, block = heads // kv, (heads // kv + 2) * head_dim
    q = [j * block + g * head_dim + d for j in range(kv) for g in range(groups) for d in range(head_dim)]
    k = [j * block + groups * head_dim + d for j in range(kv) for d in range(head_dim)]
    v = [j * block + (groups + 1) * head_dim + d for j in range(kv) for d in range(head_dim)]
    return q, k, v


def _rms(x, w, eps=1e-5):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x, theta):
    n, d = x.shape[-2], x.shape[-1]
    freqs = torch.outer(torch.arange(n, dtype=torch.float32), theta ** (-torch.arange(0, d, 2).float() / d))
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + half * sin


def reference_internlm2_logits(t: dict, ids: list[int]) -> torch.Tensor:
    """InternLM2ForCausalLM's forward on the fused remote weights (eager attention, no cache)."""
    return reference_internlm2_from_embeddings(t, t["language_model.model.tok_embeddings.weight"][ids])


def reference_internlm2_from_embeddings(t: dict, x: torch.Tensor) -> torch.Tensor:
    """The same forward from the input embeddings [tokens, hidden] (InternVL puts image features among them)."""
    heads, kv, d, groups = LM["heads"], LM["kv"], HEAD_DIM, LM["heads"] // LM["kv"]
    n = x.shape[0]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(LM["layers"]):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, t[p + "attention_norm.weight"])
        fused = (h @ t[p + "attention.wqkv.weight"].T).view(n, kv, groups + 2, d)
        q = fused[:, :, :groups].reshape(n, heads, d).transpose(0, 1)
        k = fused[:, :, -2].transpose(0, 1).repeat_interleave(groups, 0)
        v = fused[:, :, -1].transpose(0, 1).repeat_interleave(groups, 0)
        q, k = _rotate(q, 1000000.0), _rotate(k, 1000000.0)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + causal, -1) @ v
        x = x + attn.transpose(0, 1).reshape(n, heads * d) @ t[p + "attention.wo.weight"].T
        h = _rms(x, t[p + "ffn_norm.weight"])
        gate, up = h @ t[p + "feed_forward.w1.weight"].T, h @ t[p + "feed_forward.w3.weight"].T
        x = x + (F.silu(gate) * up) @ t[p + "feed_forward.w2.weight"].T
    return _rms(x, t["language_model.model.norm.weight"]) @ t["language_model.output.weight"].T


def reference_image_features(t: dict, pixels: torch.Tensor, *, layer_norm: bool) -> torch.Tensor:
    """InternVLChatModel.extract_feature (InternViT with fused qkv, pixel shuffle v2, mlp1) on the remote weights."""
    d, heads = VIT["hidden"], VIT["heads"]
    e = "vision_model.embeddings."
    x = F.conv2d(pixels, t[e + "patch_embedding.weight"], t[e + "patch_embedding.bias"], stride=VIT["patch"])
    b = x.shape[0]
    x = torch.cat([t[e + "class_embedding"].expand(b, 1, d), x.flatten(2).transpose(1, 2)], 1)
    x = x + t[e + "position_embedding"]
    norm = (
        (lambda y, p: F.layer_norm(y, (d,), t[p + ".weight"], t[p + ".bias"], 1e-6))
        if layer_norm
        else (lambda y, p: _rms(y, t[p + ".weight"], 1e-6))
    )
    for i in range(VIT["layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = norm(x, p + "norm1")
        qkv = F.linear(h, t[p + "attn.qkv.weight"], t.get(p + "attn.qkv.bias"))
        qkv = qkv.reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if p + "attn.q_norm.weight" in t:
            q = _rms(q.transpose(1, 2).flatten(-2), t[p + "attn.q_norm.weight"], 1e-6).view(b, -1, heads, d // heads)
            k = _rms(k.transpose(1, 2).flatten(-2), t[p + "attn.k_norm.weight"], 1e-6).view(b, -1, heads, d // heads)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), -1) @ v
        x = (
            x
            + F.linear(attn.transpose(1, 2).reshape(b, -1, d), t[p + "attn.proj.weight"], t[p + "attn.proj.bias"])
            * t[p + "ls1"]
        )
        h = F.linear(
            F.gelu(F.linear(norm(x, p + "norm2"), t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"])),
            t[p + "mlp.fc2.weight"],
            t[p + "mlp.fc2.bias"],
        )
        x = x + h * t[p + "ls2"]
    x = x[:, 1:]
    side = int(x.shape[1] ** 0.5)
    x = x.reshape(b, side, side, d)  # pixel shuffle, ps_version v2
    x = x.reshape(b, side, side // 2, d * 2).permute(0, 2, 1, 3).reshape(b, side // 2, side // 2, d * 4)
    x = x.permute(0, 2, 1, 3).reshape(b, -1, d * 4)
    x = F.layer_norm(x, (d * 4,), t["mlp1.0.weight"], t["mlp1.0.bias"], 1e-5)
    return F.linear(F.gelu(F.linear(x, t["mlp1.1.weight"], t["mlp1.1.bias"])), t["mlp1.3.weight"], t["mlp1.3.bias"])


# ---- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def internlm2(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("internlm2")
    src = write_remote_checkpoint(root / "InternVL2-tiny")
    return src, convert_internvl_chat(src, root / "native")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qwen2")
    src = write_remote_checkpoint(root / "InternVL2-qwen-tiny", lm="qwen2", seed=1)
    return src, convert_internvl_chat(src, root / "native", max_tiles=2)


def _native(out: Path):
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(out).eval()


def _processor(out: Path):
    from transformers import InternVLProcessor

    from dmole.stages.models.processor import load_processor

    return load_processor(out, InternVLProcessor)


# ---- tests ---------------------------------------------------------------------------------------------------------
def test_the_weights_are_read_under_one_progress_bar_over_every_tensor(internlm2, tmp_path):
    src, _ = internlm2
    progress = RecordedProgress()
    convert_internvl_chat(src, tmp_path / "native", progress=progress)
    count = safetensors_count(src)  # both shards of the InternLM2 checkpoint
    assert progress.bars == [[READING, count, count]] and count > 0


def test_wqkv_is_split_by_kv_head_groups(internlm2):
    src, out = internlm2
    fused, converted = source_tensors(src), _native(out).state_dict()
    q_rows, k_rows, v_rows = reference_qkv_rows(LM["heads"], LM["kv"], HEAD_DIM)
    assert sorted(q_rows + k_rows + v_rows) == list(range((LM["heads"] + 2 * LM["kv"]) * HEAD_DIM))
    for i in range(LM["layers"]):
        wqkv = fused[f"language_model.model.layers.{i}.attention.wqkv.weight"]
        attn = f"model.language_model.layers.{i}.self_attn."
        for rows, name in ((q_rows, "q_proj"), (k_rows, "k_proj"), (v_rows, "v_proj")):
            assert torch.equal(converted[attn + name + ".weight"], wqkv[rows]), (i, name)
        wo = fused[f"language_model.model.layers.{i}.attention.wo.weight"]
        assert torch.equal(converted[attn + "o_proj.weight"], wo)
    # InternViT's fused qkv is [q; k; v]
    qkv = fused["vision_model.encoder.layers.1.attn.qkv.weight"]
    d = VIT["hidden"]
    assert torch.equal(converted["model.vision_tower.encoder.layer.1.attention.k_proj.weight"], qkv[d : 2 * d])
    assert torch.equal(converted["lm_head.weight"], fused["language_model.output.weight"])
    # every source tensor is accounted for: the split ones by three, the others by one
    assert len(converted) == len(fused) + 2 * (LM["layers"] + VIT["layers"] * 2)


def test_converted_internlm2_computes_what_the_remote_model_computes(internlm2):
    src, out = internlm2
    model, fused = _native(out), source_tensors(src)
    assert model.config.text_config.model_type == "llama" and not model.config.tie_word_embeddings
    ids = [1, 40, 7, 200, 33, 91, 5]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(logits, reference_internlm2_logits(fused, ids), rtol=1e-4, atol=1e-4)
        pixels = torch.randn(2, 3, VIT["image"], VIT["image"], generator=torch.Generator().manual_seed(3))
        features = model.model.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(
            features, reference_image_features(fused, pixels, layer_norm=True), rtol=1e-4, atol=1e-4
        )


def test_qwen2_variant_keeps_names_and_computes_the_same_image_features(qwen2):
    src, out = qwen2
    model, fused = _native(out), source_tensors(src)
    converted = model.state_dict()
    assert model.config.text_config.model_type == "qwen2"
    assert torch.equal(
        converted["model.language_model.layers.1.self_attn.k_proj.bias"],
        fused["language_model.model.layers.1.self_attn.k_proj.bias"],
    )
    assert torch.equal(converted["lm_head.weight"], fused["language_model.lm_head.weight"])
    pixels = torch.randn(1, 3, VIT["image"], VIT["image"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(
        features, reference_image_features(fused, pixels, layer_norm=False), rtol=1e-4, atol=1e-4
    )


def test_fast_tokenizer_encodes_like_sentencepiece_and_keeps_ids(internlm2):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    src, out = internlm2
    tok = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    for text in ["the quick brown fox", "what is in the image?\nA cat.", "  two  spaces", "ünïcode ✓ 42"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
    source = json.loads((src / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {entry["content"]: int(i) for i, entry in source.items()} == {
        entry["content"]: tok.convert_tokens_to_ids(entry["content"]) for entry in source.values()
    }
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "</s>"
    assert tok.chat_template == (out / "chat_template.jinja").read_text() and "<IMG_CONTEXT>" in tok.chat_template
    assert (tok.start_image_token, tok.end_image_token, tok.context_image_token) == ("<img>", "</img>", "<IMG_CONTEXT>")
    config = json.loads((out / "config.json").read_text())
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert not list(out.glob("*.py")), "no remote code is copied"


def test_processor_renders_the_internvl2_prompt_and_expands_tiles(internlm2):
    _, out = internlm2
    processor = _processor(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # internlm2-chat: MPT separator style with sep '<|im_end|>' (no newline), BOS from InternLM2's tokenizer
    assert prompt == (
        f"<s><|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|><|im_start|>user\n<IMG_CONTEXT>\n"
        f"What is it?<|im_end|><|im_start|>assistant\n"
    )
    image = Image.new("RGB", (2 * VIT["image"], VIT["image"]), (200, 30, 30))  # 2:1 -> 2 tiles + thumbnail
    messages[0]["content"][0]["image"] = image
    batch = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
    ids = batch["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert processor.image_seq_length == TOKENS_PER_TILE
    assert batch["pixel_values"].shape == (3, 3, VIT["image"], VIT["image"])
    assert ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == TOKENS_PER_TILE * 3
    assert ids.count(tok.convert_tokens_to_ids("<img>")) == ids.count(tok.convert_tokens_to_ids("</img>")) == 1
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    start = ids.index(tok.convert_tokens_to_ids("<img>"))
    assert ids[start + TOKENS_PER_TILE * 3 + 1] == tok.convert_tokens_to_ids("</img>")
    model = _native(out)
    with torch.no_grad():  # the native model accepts what the processor produced
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        logits = model(**inputs).logits
    assert logits.shape[:2] == (1, len(ids))


def test_hermes2_template_and_max_tiles(qwen2):
    _, out = qwen2
    processor = _processor(out)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
    ]
    assert processor.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\n<IMG_CONTEXT>\nHi<|im_end|><|im_start|>assistant\n"
        "Hello<|im_end|>"
    )
    wide = Image.new("RGB", (4 * VIT["image"], VIT["image"]))
    batch = processor(images=[wide], text=["<IMG_CONTEXT>\nx"], return_tensors="pt")
    assert batch["pixel_values"].shape[0] == 3  # --max-tiles 2: two tiles and the thumbnail
    tok = processor.tokenizer
    vocab_size = json.loads((out / "config.json").read_text())["text_config"]["vocab_size"]
    assert tok.bos_token is None and len(tok) < vocab_size
    # InternVL2.5's template ends every turn with '<|im_end|>\n'
    rendered = tok.apply_chat_template(
        messages[1:], chat_template=chat_template("internvl2_5", bos=False), tokenize=False
    )
    assert rendered == (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\n"
        "Hi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    )


def test_layout_mismatches_are_one_line_errors(internlm2, tmp_path):
    src, _ = internlm2
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    shard = bad / "model-00001-of-00002.safetensors"
    tensors = load_file(shard)
    victim = next(n for n in sorted(tensors) if n.endswith("feed_forward.w3.weight"))
    del tensors[victim]
    save_file(tensors, shard)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    del index["weight_map"][victim]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConvertError, match=r"no tensor for model\.language_model\.layers\.\d\.mlp\.up_proj\.weight"):
        convert_internvl_chat(bad, tmp_path / "out1")

    tensors["language_model.model.layers.0.attention.extra.weight"] = torch.zeros(2)
    save_file(tensors, shard)
    index["weight_map"]["language_model.model.layers.0.attention.extra.weight"] = shard.name
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ConvertError, match=re.escape("unexpected tensor 'language_model.model.layers.0.attention.extra.weight'")
    ):
        convert_internvl_chat(bad, tmp_path / "out2")

    config = json.loads((src / "config.json").read_text())
    config["llm_config"]["num_key_value_heads"] = 4  # the fused rows no longer match the heads
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match="wqkv has 64 rows"):
        convert_internvl_chat(bad, tmp_path / "out3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"], "a failed conversion leaves nothing behind"


def test_cli_errors_are_one_line_and_exit_2(internlm2, tmp_path):
    src, native = internlm2
    for args, match in (
        ([str(native), str(tmp_path / "o")], "model_type is 'internvl'"),
        ([str(tmp_path / "nowhere"), str(tmp_path / "o")], "is not a folder"),
        ([str(src), str(native)], "is not empty; pass --force"),
    ):
        result = runner.invoke(app, ["convert", *args])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.output


def test_cli_converts_and_force_replaces(internlm2, tmp_path):
    src, _ = internlm2
    out = tmp_path / "native"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = runner.invoke(app, ["convert", str(src), str(out), "--max-tiles", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("convert: wrote") and "up to 1 tile)" in result.output, result.output
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"], "no temporary folder is left behind"
    assert "--max-tiles" in runner.invoke(app, ["convert", "--help"]).output


def test_dmole_loads_the_converted_folder_and_supervises_answers(internlm2):
    from dmole.stages.models.base import ChatExample
    from dmole.stages.models.registry import load_family

    _, out = internlm2
    adapter = load_family(out, device="cpu", max_tiles=2)
    image = Image.new("RGB", (2 * VIT["image"], VIT["image"]), (10, 200, 30))
    batch = adapter.train_batch([ChatExample(image, [("<image>\nWhat is it?", "A cat."), ("More?", "No.")])])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tok = adapter.tokenizer
    assert tok.decode([i for i, label in zip(ids, labels) if label != -100]) == "A cat.<|im_end|>No.<|im_end|>"
    assert ids.count(tok.bos_token_id) == 1 and ids.count(adapter.model.config.image_token_id) == TOKENS_PER_TILE * 3
    with torch.no_grad():
        assert torch.isfinite(adapter.model(**batch).loss)


def test_the_converted_folder_runs_the_stages(internlm2, run_cli_pipeline, tmp_path):
    _, out = internlm2
    workspace = run_cli_pipeline(out, tmp_path / "ws")
    assert (
        read_json(next((workspace / "train-task" / "shape-choice").glob("v*/manifest.json")))["task"] == "shape-choice"
    )
