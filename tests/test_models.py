"""Family adapters on tiny checkpoints that transformers' own save_pretrained wrote (model and processor),
in the current and the older hub layout: inputs equal the processor's, candidates, labels, features."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dmole.stages.models.base import IGNORE, ChatExample, ModelFamilyError
from dmole.stages.models.catalog import MODEL_TYPES
from dmole.stages.models.processor import NoVideo, has_torchvision, without_video
from dmole.stages.models.registry import check_folder, family_adapter, load_family
from dmole.stages.models.tiny import LAYOUTS, TinySize, build_tiny
from dmole.stages.models.tokenizer import build_byte_tokenizer
from dmole.stages.synth import FAMILIES as SYNTH_FAMILIES

FAMILY_NAMES = list(MODEL_TYPES)
SIZE = TinySize(lm_layers=2, vision_layers=2)
TURNS = [("<image>\nWhat is shown?", "A red square."), ("Sure?", "yes")]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        (name, layout): build_tiny(name, root / f"{name}-{layout}", size=SIZE, layout=layout)
        for name in FAMILY_NAMES
        for layout in LAYOUTS
    }


@pytest.fixture(scope="module", params=[(f, layout) for f in FAMILY_NAMES for layout in LAYOUTS], ids="-".join)
def adapter(request, folders):
    """Shared per family and layout: tests that change the model load their own copy."""
    return load_family(folders[request.param])


def _conversation(image, turns, generation: bool):
    messages = []
    for i, (human, gpt) in enumerate(turns):
        text = [{"type": "text", "text": human.replace("<image>", "").strip()}]
        messages.append({"role": "user", "content": ([{"type": "image", "image": image}] if i == 0 else []) + text})
        if not generation:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": gpt}]})
    return messages


def _processor_inputs(adapter, image, turns, generation: bool) -> dict:
    return adapter.processor.apply_chat_template(
        _conversation(image, turns, generation),
        tokenize=True,
        return_dict=True,
        add_generation_prompt=generation,
        return_tensors="pt",
    )


def _assert_same_pixels(ours: dict, theirs: dict) -> None:
    pixel_keys = [k for k in theirs if k.startswith(("pixel", "image"))]
    assert pixel_keys
    for key in pixel_keys:
        assert torch.equal(ours[key].cpu(), theirs[key]), key


def test_folders_are_what_transformers_writes(folders):
    for (name, layout), folder in folders.items():
        assert check_folder(folder) is family_adapter(name)
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
        if layout == "hub":
            assert {"preprocessor_config.json", "chat_template.json"} <= files and "chat_template.jinja" not in files
            assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
        else:
            assert "chat_template.jinja" in files and "preprocessor_config.json" not in files
        assert json.loads((folder / "config.json").read_text())["model_type"] in MODEL_TYPES[name]


def test_generation_inputs_equal_the_processor(adapter):
    image = _image(40, 28)
    ours = adapter.generation_batch([image], ["What is shown?"])
    theirs = _processor_inputs(adapter, image, [("What is shown?", "")], generation=True)
    # The toolkit's one extra left padding column (see generation_batch), then the processor's ids.
    assert ours["input_ids"][0, 0] == adapter.tokenizer.pad_token_id and ours["attention_mask"][0, 0] == 0
    assert ours["input_ids"][0, 1:].tolist() == theirs["input_ids"][0].tolist()
    _assert_same_pixels(ours, theirs)


def test_training_inputs_equal_the_processor_plus_end_tokens(adapter):
    image = _image(40, 28)
    ours = adapter.train_batch([ChatExample(image, TURNS)])
    theirs = _processor_inputs(adapter, image, TURNS, generation=False)
    _, _, inserted = adapter.training_text(TURNS)
    eos = adapter.tokenizer.eos_token_id
    mine, reference = ours["input_ids"][0].tolist(), theirs["input_ids"][0].tolist()
    assert mine.count(eos) == reference.count(eos) + len(inserted)
    assert [t for t in mine if t != eos] == [t for t in reference if t != eos]
    _assert_same_pixels(ours, theirs)


def test_labels_are_each_answer_through_its_end_token(adapter):
    batch = adapter.train_batch([ChatExample(_image(40, 28), TURNS)])
    labels = batch["labels"][0]
    kept = labels[labels != IGNORE].tolist()
    assert torch.equal(batch["input_ids"][0][labels != IGNORE], labels[labels != IGNORE])
    ends = set(adapter.end_token_ids)
    assert sum(t in ends for t in kept) == len(TURNS) and kept[-1] in ends
    text = adapter.tokenizer.decode(kept, skip_special_tokens=True)
    assert text.replace(" ", "") == "".join(a for _, a in TURNS).replace(" ", "")


def test_a_conversation_is_rendered_once_however_often_it_is_trained(adapter, monkeypatch):
    first = adapter.training_text(TURNS)
    renders = []
    render = adapter._render
    monkeypatch.setattr(adapter, "_render", lambda *a, **k: renders.append(a) or render(*a, **k))
    assert adapter.training_text([tuple(turn) for turn in TURNS]) == first  # an equal conversation, a new list
    assert renders == []
    longer = adapter.training_text([*TURNS, ("And?", "no")])
    assert renders and longer[0].startswith(first[0][: len(first[0]) // 2]) and longer != first


def test_llava_15_template_writes_no_end_token_so_eos_is_appended(folders):
    llava = load_family(folders["llava", "hub"])
    text, spans, inserted = llava.training_text(TURNS)
    assert len(inserted) == 2 and "</s>" not in llava.processor.apply_chat_template(
        _conversation(None, TURNS, generation=False)
    )
    assert [text[a:b] for a, b in spans] == [" A red square.</s>", " yes</s>"]
    # And the processor's leading <s> is there, as LlavaProcessor adds it.
    assert llava.generation_batch([_image(32, 32)], ["Hi"])["input_ids"][0, 1] == llava.tokenizer.bos_token_id


def test_training_step_reaches_the_candidates(adapter, folders):
    adapter = load_family(folders[adapter.family, "current"])  # trained below
    batch = adapter.train_batch([ChatExample(_image(40, 28), TURNS), ChatExample(_image(20, 44, 1), TURNS[:1])])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    adapter.model.train()
    loss = adapter.model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    modules = dict(adapter.model.named_modules())
    for tower in ("vision", "language"):
        first = next(c for c in adapter.candidates() if c.tower == tower)
        assert modules[first.name].weight.grad.abs().sum() > 0, (adapter.family, first.name)


def test_vision_rows_map_to_their_samples(adapter):
    batch = adapter.generation_batch([_image(40, 28), _image(70, 24, 1)], ["a", "b"])
    seen: list[int] = []
    hook = adapter.vision_layers()[0].register_forward_hook(
        lambda _m, args, _o: seen.append((args[0] if args else _o[0]).shape[0])
    )
    try:
        with torch.no_grad():
            adapter.model(**batch)
    finally:
        hook.remove()
    rows = adapter.vision_row_samples(batch)
    if rows is None:
        assert seen[0] == 2
    else:
        assert len(rows) == seen[0] and rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1}


def test_candidates_are_linears_of_both_towers(adapter):
    modules = dict(adapter.model.named_modules())
    candidates = adapter.candidates()
    vision = [c for c in candidates if c.tower == "vision"]
    language = [c for c in candidates if c.tower == "language"]
    fused = "qkv" in adapter.vision_attention.values()
    assert {c.kind for c in vision} == ({"qkv", "o"} if fused else {"q", "k", "v", "o"})
    assert len(vision) == (2 if fused else 4) * adapter._vision_layers_used()
    assert len(language) == 4 * SIZE.lm_layers and {c.kind for c in language} == {"q", "k", "v", "o"}
    assert {c.layer for c in language} == set(range(len(adapter.language_layers())))
    assert len({c.name for c in candidates}) == len(candidates)
    for c in candidates:
        assert isinstance(modules[c.name], torch.nn.Linear) and modules[c.name].weight.shape == (c.d_out, c.d_in)
    extra = [c for c in adapter.candidates(include_mlp=True) if c not in candidates]
    assert {c.kind for c in extra if c.tower == "language"} == {"mlp_gate", "mlp_up", "mlp_down"}
    assert {c.kind for c in extra if c.tower == "vision"} >= {"mlp_up", "mlp_down"}


def test_candidates_skip_vision_layers_that_never_reach_the_projector(folders):
    llava = load_family(folders["llava", "current"])
    llava.model.config.vision_feature_layer = -2
    assert {c.layer for c in llava.candidates() if c.tower == "vision"} == set(range(SIZE.vision_layers - 1))


def test_a_pattern_that_matches_nothing_is_an_error(adapter, monkeypatch):
    monkeypatch.setattr(adapter, "vision_attention", {"attn.no_such_proj": "q"}, raising=False)
    with pytest.raises(ModelFamilyError, match="no module matches"):
        adapter.candidates()


def test_text_features_ignore_padding(adapter):
    alone = adapter.text_features(["short question"])
    batched = adapter.text_features(["short question", "a much longer question " * 5])
    assert alone.dtype == torch.float32 and batched.shape == (2, adapter.d_language)
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-6)  # Gemma scales embeddings by sqrt(d)


def test_user_turn_ids_hold_only_the_user_turn(adapter):
    text = adapter.tokenizer.decode(adapter.user_turn_ids("What is it?"))
    assert "What is it?" in text and "helpful assistant" not in text and "x" not in text.replace("What is it?", "")


def test_vision_features_pool_the_thumbnail_only(adapter):
    images = [_image(40, 28), _image(90, 30, seed=3)]  # the second one tiles where the family tiles
    features = adapter.vision_features(images)
    assert features.shape == (2, adapter.d_vision) and torch.isfinite(features).all()
    torch.testing.assert_close(adapter.vision_features(images[1:])[0], features[1], atol=1e-5, rtol=0)


def test_max_tiles_caps_internvl_tiles(folders):
    wide = _image(200, 40)
    free = load_family(folders["internvl", "current"])
    capped = load_family(folders["internvl", "current"], max_tiles=2)
    n_free = free.generation_batch([wide], ["?"])["pixel_values"].shape[0]
    n_capped = capped.generation_batch([wide], ["?"])["pixel_values"].shape[0]
    assert n_free > 3 and n_capped == 3  # two tiles and the thumbnail


def test_expand_to_square_centres_the_image_on_the_fill_colour():
    from dmole.stages.models.base import expand_to_square

    wide = _image(20, 10)
    square = expand_to_square(wide, (1, 2, 3))
    assert square.size == (20, 20)
    pixels, original = np.asarray(square), np.asarray(wide)
    assert (pixels[5:15] == original).all()  # centred: (20 - 10) // 2 rows above
    assert (pixels[:5] == (1, 2, 3)).all() and (pixels[15:] == (1, 2, 3)).all()
    tall = expand_to_square(_image(7, 12), (0, 0, 0))
    assert tall.size == (12, 12) and (np.asarray(tall)[:, 2:9] == np.asarray(_image(7, 12))).all()
    assert expand_to_square(square, (9, 9, 9)) is square


def test_pad_to_square_feeds_the_processor_a_padded_image(folders):
    """LLaVA-1.5's --image_aspect_ratio pad: the wide image on a square of the processor's mean colour, in the
    training, generation and embedding inputs alike."""
    from dmole.stages.models.base import expand_to_square

    plain = load_family(folders["llava", "current"])
    padded = load_family(folders["llava", "current"], pad_to_square=True)
    wide = _image(64, 24)
    fill = tuple(int(round(255 * m)) for m in plain.image_processor.image_mean)
    by_hand = plain.generation_batch([expand_to_square(wide, fill)], ["?"])["pixel_values"]
    assert torch.equal(padded.generation_batch([wide], ["?"])["pixel_values"], by_hand)
    assert not torch.equal(plain.generation_batch([wide], ["?"])["pixel_values"], by_hand)
    example = ChatExample(image=wide, turns=TURNS)
    assert torch.equal(padded.train_batch([example])["pixel_values"], by_hand)
    torch.testing.assert_close(padded.vision_features([wide]), plain.vision_features([expand_to_square(wide, fill)]))


def test_each_family_s_adapter_is_named_in_the_catalog_and_loading_one_imports_no_other(folders):
    """The catalog says where each family's adapter lives; a process that loads a llava folder imports llava's module
    alone, not the other families' (each pulls its own transformers classes: a third of a second of every stage's
    start)."""
    assert {name: family_adapter(name).family for name in MODEL_TYPES} == {name: name for name in MODEL_TYPES}
    others = ("internvl", "qwen", "idefics3", "gemma3")
    code = (
        "import sys; from dmole.stages.models.registry import load_family; "
        f"load_family(sys.argv[1]); print(*(f'dmole.stages.models.{{m}}' in sys.modules for m in {others!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folders["llava", "current"])], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"] * len(others)


def test_processor_loads_without_torchvision(folders):
    parts = without_video(family_adapter("qwen2vl").processor_class).get_attributes()
    assert parts == ["image_processor", "tokenizer"]
    loaded = load_family(folders["qwen2vl", "hub"]).processor
    assert type(loaded).__name__ == "Qwen2VLProcessor"
    assert has_torchvision() or isinstance(loaded.video_processor, NoVideo)


def test_same_seed_same_weights_and_save_round_trips(folders, tmp_path):
    first = load_family(folders["llava", "current"])
    again = load_family(build_tiny("llava", tmp_path / "again", size=SIZE)).model.state_dict()
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again[name]), name
    first.save(tmp_path / "saved")
    reloaded = load_family(tmp_path / "saved")
    assert reloaded.processor.chat_template == first.processor.chat_template
    assert all(
        torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), reloaded.model.state_dict().values())
    )


def test_unusable_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ModelFamilyError, match=r"no config\.json.*llava"):
        load_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFamilyError, match=r"'bert'.*gemma3"):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(ModelFamilyError, match="dmole convert"):
        check_folder(tmp_path)
    no_template = build_tiny("qwen2vl", tmp_path / "nt", size=SIZE, layout="hub")
    (no_template / "chat_template.json").unlink()
    with pytest.raises(ModelFamilyError, match="no chat template"):
        check_folder(no_template)
    (no_template / "tokenizer.json").unlink()
    with pytest.raises(ModelFamilyError, match="processor does not load"):
        check_folder(no_template)
    with pytest.raises(ModelFamilyError, match="unknown family"):
        build_tiny("gpt2", tmp_path / "x")


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = build_byte_tokenizer()
    text = "héllo ✓ 数据 \x00\t🙂"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode())
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("family", SYNTH_FAMILIES)
def test_image_tokens_are_the_whole_view_with_gradients(folders, family):
    adapter = load_family(folders[(family, "current")])
    images = [_image(40, 28), _image(90, 30, seed=3)]
    tokens = adapter.image_tokens([adapter.image_inputs(image) for image in images])
    assert len(tokens) == 2 and all(t.dim() == 2 and t.shape[1] == adapter.d_language for t in tokens)
    alone = adapter.image_tokens([adapter.image_inputs(images[1])])[0]
    torch.testing.assert_close(alone, tokens[1], atol=1e-5, rtol=1e-5)
    tokens[0].sum().backward()
    language = {id(p) for p in adapter.language_side()}
    vision_grads = [p.grad for p in adapter.model.parameters() if id(p) not in language and p.grad is not None]
    assert vision_grads and any(g.abs().sum() > 0 for g in vision_grads)
    assert all(p.grad is None for p in adapter.language_side())


def test_sequence_embeddings_run_a_repeated_text_once_and_equal_each_alone(adapter):
    from dmole.stages.dmole.embedding import sequence_embeddings

    images = [_image(32, 32, seed=s) for s in range(3)]
    texts = ["the same instruction", "another one", "the same instruction"]
    calls = []
    original = adapter.text_features
    adapter.text_features = lambda batch: calls.append(list(batch)) or original(batch)
    try:
        together = sequence_embeddings(adapter, images, texts)
    finally:
        del adapter.text_features
    assert calls == [["the same instruction", "another one"]]
    for row, (image, text) in enumerate(zip(images, texts)):
        np.testing.assert_allclose(sequence_embeddings(adapter, [image], [text])[0], together[row], atol=1e-5, rtol=0)
