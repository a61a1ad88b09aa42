"""Family adapters on tiny random models: loading, candidates, batches, features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stages.models.base import ChatExample, ModelFamilyError
from stages.models.registry import FAMILIES, load_family
from stages.models.tiny import TinySize, build_tiny
from stages.models.tokenizer import build_byte_tokenizer

FAMILY_NAMES = sorted(FAMILIES)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine each
    threaded op waits for the other core (~8 ms per matmul)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {name: build_tiny(name, root / name) for name in FAMILY_NAMES}


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def adapter(request, folders):
    """Shared per family: tests that change the model load their own copy."""
    return load_family(folders[request.param])


def test_round_trip_detects_family(folders):
    for name, folder in folders.items():
        loaded = load_family(folder)
        assert type(loaded) is FAMILIES[name] and loaded.family == name
        assert loaded.dtype == torch.float32 and not loaded.model.training
        for file in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                     "preprocessor_config.json"):
            assert (folder / file).is_file(), file


def test_same_seed_same_weights(folders, tmp_path):
    again = load_family(build_tiny("llava", tmp_path, seed=0)).model.state_dict()
    for name, tensor in load_family(folders["llava"]).model.state_dict().items():
        assert torch.equal(tensor, again[name]), name


def test_save_reloads_same_weights(adapter, tmp_path):
    adapter.save(tmp_path)
    again = load_family(tmp_path)
    for (name, a), (_, b) in zip(adapter.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_unknown_or_missing_family_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelFamilyError, match="no config.json.*llava"):
        load_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFamilyError, match=rf"{tmp_path}.*'bert'.*qwen2vl"):
        load_family(tmp_path)
    with pytest.raises(ModelFamilyError, match="unknown family"):
        build_tiny("gpt2", tmp_path / "x")


def test_candidates_are_attention_linears_of_both_towers(adapter):
    modules = dict(adapter.model.named_modules())
    size = TinySize()
    per_vision_layer = 2 if adapter.family == "qwen2vl" else 4  # fused qkv + proj
    candidates = adapter.candidates()
    vision = [c for c in candidates if c.tower == "vision"]
    language = [c for c in candidates if c.tower == "language"]
    assert len(vision) == per_vision_layer * size.vision_layers >= 2 * 4
    assert len(language) == 4 * size.lm_layers >= 4 * 8
    assert {c.layer for c in vision} == set(range(len(adapter.vision_layers())))
    assert {c.layer for c in language} == set(range(len(adapter.language_layers())))
    assert len({c.name for c in candidates}) == len(candidates)
    for c in candidates:
        module = modules[c.name]
        assert isinstance(module, torch.nn.Linear)
        assert module.weight.shape == (c.d_out, c.d_in)
    expected_kinds = {"qkv", "o"} if adapter.family == "qwen2vl" else {"q", "k", "v", "o"}
    assert {c.kind for c in vision} == expected_kinds
    assert {c.kind for c in language} == {"q", "k", "v", "o"}

    with_mlp = adapter.candidates(include_mlp=True)
    extra = [c for c in with_mlp if c not in candidates]
    assert {c.kind for c in extra if c.tower == "vision"} == {"mlp_up", "mlp_down"}
    assert {c.kind for c in extra if c.tower == "language"} == {"mlp_gate", "mlp_up", "mlp_down"}
    assert len(extra) == 2 * size.vision_layers + 3 * size.lm_layers


def test_candidates_skip_vision_layers_that_never_reach_the_projector(folders):
    llava = load_family(folders["llava"])
    llava.model.config.vision_feature_layer = -2
    layers = {c.layer for c in llava.candidates() if c.tower == "vision"}
    assert layers == set(range(TinySize().vision_layers - 1))


def test_a_pattern_that_matches_nothing_is_an_error(adapter, monkeypatch):
    monkeypatch.setattr(adapter, "vision_attention", {"attn.no_such_proj": "q"}, raising=False)
    with pytest.raises(ModelFamilyError, match="no module matches"):
        adapter.candidates()


def test_layer_lists(adapter):
    assert len(adapter.language_layers()) == TinySize().lm_layers
    assert len(adapter.vision_layers()) == TinySize().vision_layers
    assert all(hasattr(layer, "input_layernorm") for layer in adapter.language_layers())


def test_train_batch_labels_answers_and_turn_end_only(adapter, folders):
    adapter = load_family(folders[adapter.family])  # trained below
    examples = [
        ChatExample(_image(40, 28), [("<image>\nWhat is shown?", "A red square."), ("Sure?", "héllo ✓")]),
        ChatExample(_image(32, 32, seed=1), [("Describe <image> briefly", "数据")]),
    ]
    batch = adapter.train_batch(examples)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    assert mask[0, 0] == 1 and mask[:, 0].all()  # right padding
    end = adapter.tokenizer.eos_token_id
    for row, example in enumerate(examples):
        kept = labels[row][labels[row] != -100]
        want = [t for _, answer in example.turns for t in [*answer.encode(), end]]
        assert kept.tolist() == want
        assert torch.equal(ids[row][labels[row] != -100], kept)
    assert (labels[mask == 0] == -100).all()

    adapter.model.train()
    loss = adapter.model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    first = adapter.candidates()[0]
    assert dict(adapter.model.named_modules())[first.name].weight.grad.abs().sum() > 0


def test_generation_is_left_padded_and_decodes(adapter):
    prompts = ["Color?", "What shape is in the middle of this picture?"]
    batch = adapter.generation_batch([_image(40, 28), _image(24, 48, seed=2)], prompts)
    assert batch["attention_mask"][:, -1].all() and batch["attention_mask"][0, 0] == 0
    out = adapter.model.generate(**batch, max_new_tokens=3, do_sample=False)
    texts = adapter.decode_new_tokens(out, batch["input_ids"].shape[1])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_user_turn_ids_hold_only_the_user_turn(adapter):
    text = adapter.tokenizer.decode(adapter.user_turn_ids("What is it?"))
    assert text == "<|im_start|>user\nWhat is it?<|im_end|>"


# Qwen2-VL's own template: a default system prompt before the first turn.
QWEN2VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_system_prompt_is_neither_labelled_nor_in_the_user_turn(folders):
    qwen = load_family(folders["qwen2vl"])
    qwen.tokenizer.chat_template = QWEN2VL_TEMPLATE
    assert qwen.tokenizer.decode(qwen.user_turn_ids("Why?")) == "<|im_start|>user\nWhy?<|im_end|>"
    batch = qwen.train_batch([ChatExample(_image(32, 32), [("<image>\nWhy?", "Because.")])])
    assert "helpful" in qwen.tokenizer.decode(batch["input_ids"][0])
    assert batch["labels"][0][batch["labels"][0] != -100].tolist() == [*b"Because.", qwen.tokenizer.eos_token_id]
    assert torch.isfinite(qwen.model(**batch).loss)


def test_text_features_ignore_padding(adapter):
    alone = adapter.text_features(["short question"])
    batched = adapter.text_features(["short question", "a much longer question " * 5])
    assert alone.dtype == torch.float32 and batched.shape == (2, adapter.d_language)
    torch.testing.assert_close(alone[0], batched[0], atol=1e-6, rtol=0)


def test_vision_features_pool_the_thumbnail(adapter):
    images = [_image(40, 28), _image(24, 48, seed=3)]
    features = adapter.vision_features(images)
    assert features.shape == (2, adapter.d_vision) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    torch.testing.assert_close(adapter.vision_features(images[:1])[0], features[0], atol=1e-6, rtol=0)


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = build_byte_tokenizer()
    text = "héllo ✓ 数据 \x00\t🙂"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode())
    assert tokenizer.decode(ids) == text
