"""dmole convert on a tiny LLaVA-1.5 checkpoint in the original layout (liuhaotian/llava-v1.5-7b's
LlavaLlamaForCausalLM): the converted transformers LLaVA computes the logits of the original architecture, which
the test builds as haotian-liu/LLaVA runs it: CLIPVisionModel's second-to-last hidden states without CLS, the
mlp2x_gelu projector, the features spliced in at the image placeholder, and LlamaForCausalLM on the embeddings."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import RecordedProgress, safetensors_count
from dmole.stages.convert import READING, ConvertError
from dmole.stages.convert_llava import VICUNA_SYSTEM, convert_llava_original, is_original_llava

TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=128,
    hidden_act="silu",
)
VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    projection_dim=8,
    hidden_act="quick_gelu",
)
PATCHES = (28 // 14) ** 2
TOWER = "model.vision_tower.vision_tower.vision_model."  # as LLaVA saved CLIPVisionModel under transformers 4


def _tokenizer(folder) -> int:
    """A tiny Llama-style sentencepiece BPE (unk 0, bos 1, eos 2, dummy prefix); returns its size."""
    import sentencepiece as spm

    text = [
        "the quick brown fox jumps over the lazy dog",
        "a picture of a cat on a mat",
        "what is in the image?",
        "describe the scene in one sentence",
        "USER: ASSISTANT: a chat",
    ] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 2048,
            }
        )
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def write_original(folder, *, tower_inside: bool = True, seed: int = 0) -> dict:
    """An original-layout LLaVA-1.5 folder; the CLIP tower folder beside it. Returns the source tensors."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    vocab = _tokenizer(folder)
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **TEXT))
    clip = CLIPVisionModel(CLIPVisionConfig(**VISION))
    for p in [*llama.parameters(), *clip.parameters()]:  # away from the init's zeros and ones
        p.data.normal_(0, 0.3)
    tower = folder.parent / f"{folder.name}-clip"
    clip.save_pretrained(tower)
    tensors = {k: v.contiguous() for k, v in llama.state_dict().items()}
    tensors |= {
        "model.mm_projector.0.weight": torch.randn(32, 16) * 0.3,
        "model.mm_projector.0.bias": torch.randn(32),
        "model.mm_projector.2.weight": torch.randn(32, 32) * 0.3,
        "model.mm_projector.2.bias": torch.randn(32),
    }
    if tower_inside:
        tensors |= {f"{TOWER}{k}": v.contiguous() for k, v in clip.state_dict().items()}
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlavaLlamaForCausalLM"],
                "model_type": "llava",
                "vocab_size": vocab,
                **TEXT,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 0,
                "tie_word_embeddings": False,
                "torch_dtype": "float32",
                "mm_vision_tower": str(tower),
                "mm_hidden_size": 16,
                "mm_projector_type": "mlp2x_gelu",
                "mm_vision_select_layer": -2,
                "mm_vision_select_feature": "patch",
                "image_aspect_ratio": "pad",
                "mm_use_im_start_end": False,
                "mm_use_im_patch_token": False,
                "tune_mm_mlp_adapter": False,
                "freeze_mm_mlp_adapter": False,
            }
        )
    )
    return {**tensors, **{f"{TOWER}{k}": v for k, v in clip.state_dict().items()}}


def original_logits(t: dict, vocab: int, ids_before: list[int], ids_after: list[int], pixels) -> torch.Tensor:
    """LlavaLlamaForCausalLM's forward on the checkpoint's tensors `t`."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    clip = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    clip.load_state_dict({k[len(TOWER) :]: v for k, v in t.items() if k.startswith(TOWER)})
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **TEXT)).eval()
    llama.load_state_dict({k: v for k, v in t.items() if not k.startswith(("model.vision_tower", "model.mm_"))})

    def projector(features):
        h = F.gelu(features @ t["model.mm_projector.0.weight"].T + t["model.mm_projector.0.bias"])
        return h @ t["model.mm_projector.2.weight"].T + t["model.mm_projector.2.bias"]

    return llava_forward(clip, projector, llama, ids_before, ids_after, pixels)


def llava_forward(clip, projector, llama, ids_before: list[int], ids_after: list[int], pixels) -> torch.Tensor:
    """CLIPVisionTower (hidden_states[-2], patches only), the projector, the features in place of IMAGE_TOKEN_INDEX
    (prepare_inputs_labels_for_multimodal), then the Llama."""
    with torch.no_grad():
        features = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        image = projector(features)
        embed = llama.model.embed_tokens
        x = torch.cat([embed(torch.tensor(ids_before)), image[0], embed(torch.tensor(ids_after))])
        return llama(inputs_embeds=x[None]).logits[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    tensors = write_original(root / "llava-v1.5-tiny")
    return root / "llava-v1.5-tiny", convert_llava_original(root / "llava-v1.5-tiny", root / "out"), tensors


def test_converted_llava_computes_the_original_logits(converted):
    from transformers import LlavaForConditionalGeneration

    src, out, tensors = converted
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    image_id = model.config.image_token_id
    assert image_id == vocab  # <image> comes right after the original vocabulary, as transformers' script adds it
    before, after = [1, 17, 42, 5], [99, 7, 3]
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([before + [image_id] * PATCHES + after]), pixel_values=pixels).logits[0]
    want = original_logits(tensors, vocab, before, after, pixels)
    assert got.shape[0] == want.shape[0] and got.shape[1] % 64 == 0
    assert torch.allclose(got[:, :vocab], want, atol=1e-5), (got[:, :vocab] - want).abs().max()


def test_tower_from_its_own_folder_gives_the_same_model(converted, tmp_path):
    from safetensors.torch import load_file

    _src, out, _tensors = converted
    write_original(tmp_path / "llava-no-tower", tower_inside=False)
    progress = RecordedProgress()
    again = convert_llava_original(tmp_path / "llava-no-tower", tmp_path / "out", progress=progress)
    tower = json.loads((tmp_path / "llava-no-tower" / "config.json").read_text())["mm_vision_tower"]
    read = safetensors_count(tmp_path / "llava-no-tower") + safetensors_count(tmp_path / "llava-no-tower" / tower)
    assert progress.bars == [[READING, read, read]]  # the checkpoint's tensors, then the tower folder's
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: same weights, the added rows included


def test_processor_pads_expands_and_templates(converted):
    from PIL import Image
    from transformers import AutoProcessor

    src, out, _ = converted
    processor = AutoProcessor.from_pretrained(out)
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}],
        add_generation_prompt=True,
    )
    assert prompt == f"<s>{VICUNA_SYSTEM} USER: <image>\nwhat is it? ASSISTANT:"
    two_turns = processor.apply_chat_template(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "and?"},
        ],
        add_generation_prompt=True,
    )
    assert two_turns == f"<s>{VICUNA_SYSTEM} USER: hi ASSISTANT: yo</s>USER: and? ASSISTANT:"  # conv.get_prompt()
    batch = processor(images=image, text=prompt, return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum() == PATCHES
    assert tuple(batch["pixel_values"].shape) == (1, 3, 28, 28)
    # "pad": the 40x20 image is centred on a 40x40 square of the mean colour, so the top rows are not red
    red = (1 - 0.48145466) / 0.26862954
    assert batch["pixel_values"][0, 0, 0].mean() < red - 1 and batch["pixel_values"][0, 0, 14].mean() == pytest.approx(
        red, abs=0.05
    )
    # the original vocabulary keeps its ids
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    assert processor.tokenizer("a picture of a cat", add_special_tokens=False)["input_ids"] == sp.encode(
        "a picture of a cat"
    )


def test_not_an_original_llava_is_a_one_line_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {}}))
    assert not is_original_llava({"model_type": "llava", "vision_config": {}})
    with pytest.raises(ConvertError, match="not an original-layout LLaVA"):
        convert_llava_original(tmp_path / "src", tmp_path / "out")


def test_cli_converts_an_original_llava(tmp_path):
    from typer.testing import CliRunner

    from dmole.cli.app import app

    write_original(tmp_path / "src")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "src"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (
        result.output.startswith("convert: wrote") and "clip_vision_model 3 layers; 4 image tokens" in result.output
    ), result.output
    refused = CliRunner().invoke(app, ["convert", str(tmp_path / "src"), str(tmp_path / "out2"), "--max-tiles", "2"])
    assert refused.exit_code == 2 and "--max-tiles applies to InternVL" in refused.output


def test_dmole_loads_the_converted_llava_and_supervises_answers(converted):
    from PIL import Image

    from dmole.stages.models.base import ChatExample
    from dmole.stages.models.registry import load_family

    _, out, _ = converted
    adapter = load_family(out, device="cpu")
    batch = adapter.train_batch(
        [ChatExample(Image.new("RGB", (30, 20), (10, 200, 30)), [("<image>\nWhat is it?", "a cat")])]
    )
    ids = batch["input_ids"][0].tolist()
    assert ids.count(adapter.model.config.image_token_id) == PATCHES
    with torch.no_grad():
        assert torch.isfinite(adapter.model(**batch).loss)


# ---- CoIN's pretrain-only base: Vicuna + LLaVA-1.5's mm_projector.bin + the CLIP folder ------------------------------
PROJECTOR = {  # as LLaVA's pretrain stage saves it (get_mm_adapter_state_maybe_zero_3 on LlavaLlamaForCausalLM)
    "model.mm_projector.0.weight": (32, 16),
    "model.mm_projector.0.bias": (32,),
    "model.mm_projector.2.weight": (32, 32),
    "model.mm_projector.2.bias": (32,),
}


def write_pretrain(root, seed: int = 1):
    """CoIN's three inputs: a Llama folder written by transformers (--model_name_or_path), a CLIP folder
    (--vision_tower) and the pretrain folder holding mm_projector.bin (--pretrain_mm_mlp_adapter)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    vicuna, tower, pretrain = root / "vicuna", root / "clip", root / "pretrain"
    vicuna.mkdir(parents=True)
    vocab = _tokenizer(vicuna)
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **TEXT))
    clip = CLIPVisionModel(CLIPVisionConfig(**VISION))
    for p in [*llama.parameters(), *clip.parameters()]:
        p.data.normal_(0, 0.3)
    llama.save_pretrained(vicuna)
    clip.save_pretrained(tower)
    pretrain.mkdir()
    torch.save({k: torch.randn(shape) * 0.3 for k, shape in PROJECTOR.items()}, pretrain / "mm_projector.bin")
    return vicuna, tower, pretrain


def coin_logits(vicuna, tower, pretrain, before, after, pixels) -> torch.Tensor:
    """The model CoIN's train_mem.py builds from those three: the Llama, CLIPVisionModel.from_pretrained(tower),
    build_vision_projector's mlp2x_gelu (Linear, GELU, Linear) loaded from mm_projector.bin by
    initialize_vision_modules' get_w (the key after 'mm_projector.')."""
    from torch import nn
    from transformers import CLIPVisionModel, LlamaForCausalLM

    llama = LlamaForCausalLM.from_pretrained(vicuna).eval()
    clip = CLIPVisionModel.from_pretrained(tower).eval()
    projector = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32))
    weights = torch.load(pretrain / "mm_projector.bin", weights_only=True)
    projector.load_state_dict({k.split("mm_projector.")[1]: v for k, v in weights.items()})
    return llava_forward(clip, projector, llama, before, after, pixels)


def test_pretrain_only_base_computes_coins_logits(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from dmole.stages.convert_llava import convert_llava_pretrain

    vicuna, tower, pretrain = write_pretrain(tmp_path)
    out = convert_llava_pretrain(vicuna, pretrain, tower, tmp_path / "out")
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    vocab = json.loads((vicuna / "config.json").read_text())["vocab_size"]
    assert model.config.image_token_id == vocab and model.config.vision_feature_layer == -2
    before, after = [1, 17, 42, 5], [99, 7, 3]
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        got = model(
            input_ids=torch.tensor([before + [model.config.image_token_id] * PATCHES + after]), pixel_values=pixels
        )
    want = coin_logits(vicuna, tower, pretrain, before, after, pixels)
    assert torch.allclose(got.logits[0, :, :vocab], want, atol=1e-5), (got.logits[0, :, :vocab] - want).abs().max()
    # the same weights from the file itself as from its folder, and the processor pads as CoIN's --image_aspect_ratio
    again = convert_llava_pretrain(vicuna, pretrain / "mm_projector.bin", tower, tmp_path / "again")
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(out).image_processor.do_pad is True


def test_pretrain_cli_and_its_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from dmole.cli.app import app

    vicuna, tower, pretrain = write_pretrain(tmp_path)
    run = CliRunner().invoke
    args = ["convert", str(vicuna), str(tmp_path / "out"), "--projector", str(pretrain)]
    result = run(app, [*args, "--vision-tower", str(tower)])
    assert result.exit_code == 0 and "clip_vision_model 3 layers; 4 image tokens" in result.output, result.output
    no_tower = run(app, [*args[:2], str(tmp_path / "o2"), *args[3:]])
    assert no_tower.exit_code == 2 and "--projector needs --vision-tower" in no_tower.output
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "bad.bin")
    bad = run(
        app,
        [
            "convert",
            str(vicuna),
            str(tmp_path / "o3"),
            "--projector",
            str(tmp_path / "bad.bin"),
            "--vision-tower",
            str(tower),
        ],
    )
    assert bad.exit_code == 2 and "'model.embed_tokens.weight' is not a projector tensor" in bad.output, bad.output
    missing = run(
        app,
        [
            "convert",
            str(vicuna),
            str(tmp_path / "o4"),
            "--projector",
            str(tmp_path / "none.bin"),
            "--vision-tower",
            str(tower),
        ],
    )
    assert missing.exit_code == 2 and "no such file" in missing.output
    short = dict(torch.load(pretrain / "mm_projector.bin", weights_only=True))
    del short["model.mm_projector.2.bias"]
    torch.save(short, tmp_path / "short.bin")
    incomplete = run(
        app,
        [
            "convert",
            str(vicuna),
            str(tmp_path / "o5"),
            "--projector",
            str(tmp_path / "short.bin"),
            "--vision-tower",
            str(tower),
        ],
    )
    assert incomplete.exit_code == 2 and "linear_2.bias" in incomplete.output, incomplete.output
    not_llama = run(
        app, ["convert", str(tower), str(tmp_path / "o6"), "--projector", str(pretrain), "--vision-tower", str(tower)]
    )
    assert not_llama.exit_code == 2 and "model_type is 'clip_vision_model'" in not_llama.output, not_llama.output
    assert not any((tmp_path / f"o{i}").exists() for i in range(2, 7))  # nothing written on failure
