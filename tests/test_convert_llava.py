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

from dmole.stages.convert import ConvertError
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
    """LlavaLlamaForCausalLM's forward: CLIPVisionTower (hidden_states[-2], patches only), mlp2x_gelu, the
    features in place of IMAGE_TOKEN_INDEX (prepare_inputs_labels_for_multimodal), then the Llama."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    clip = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    clip.load_state_dict({k[len(TOWER) :]: v for k, v in t.items() if k.startswith(TOWER)})
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **TEXT)).eval()
    llama.load_state_dict({k: v for k, v in t.items() if not k.startswith(("model.vision_tower", "model.mm_"))})
    with torch.no_grad():
        features = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        h = F.gelu(features @ t["model.mm_projector.0.weight"].T + t["model.mm_projector.0.bias"])
        image = h @ t["model.mm_projector.2.weight"].T + t["model.mm_projector.2.bias"]
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
    again = convert_llava_original(tmp_path / "llava-no-tower", tmp_path / "out")
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
