"""The synthetic base's two pre-training phases: the vision side learns the scenes' attributes, then the
language side learns the instruction mixture; each phase leaves the other side exactly as it was."""

from __future__ import annotations

import torch

from dmole.stages.data.synthetic import SCENE_ATTRIBUTES, SynthSizes, attribute_scenes, pretraining_mixture
from dmole.stages.data.training_file import read_training_file
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.pretrain import PretrainSettings, pretrain, pretrain_vision

SIZES = SynthSizes(image_size=32, pretrain_samples=10, vision_samples=64)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def test_each_phase_trains_its_own_side_only(tmp_path):
    adapter = load_family(
        build_tiny("llava", tmp_path / "base", size=TinySize(lm_layers=2, vision_layers=2), byte_tokenizer=True)
    )
    language = adapter.language_side()
    ids = {id(p) for p in language}
    vision = [p for p in adapter.model.parameters() if id(p) not in ids]
    images, labels = attribute_scenes(sizes=SIZES)
    assert set(labels) == set(SCENE_ATTRIBUTES) and all(len(v) == len(images) for v in labels.values())
    assert all(0 <= c < len(SCENE_ATTRIBUTES[name]) for name, classes in labels.items() for c in classes)

    language_before, vision_before = _snapshot(language), _snapshot(vision)
    log = pretrain_vision(adapter, images, labels, PretrainSettings(vision_epochs=6, batch_size=16))
    assert all(torch.equal(a, b) for a, b in zip(language_before, language))
    assert any(not torch.equal(a, b) for a, b in zip(vision_before, vision))
    per_epoch = len(images) // 16
    first, last = (sum(float(row["loss"]) for row in rows) / per_epoch for rows in (log[:per_epoch], log[-per_epoch:]))
    assert last < 0.9 * first  # the heads learn to read the attributes off the mean image token

    pretraining_mixture(tmp_path / "data", sizes=SIZES)
    mixture = read_training_file(
        tmp_path / "data" / "pretrain" / "train.jsonl", data_root=tmp_path / "data", image_root=tmp_path / "data"
    )
    language_before, vision_before = _snapshot(language), _snapshot(vision)
    pretrain(adapter, mixture, PretrainSettings(epochs=1, batch_size=5))
    assert all(torch.equal(a, b) for a, b in zip(vision_before, vision))
    assert any(not torch.equal(a, b) for a, b in zip(language_before, language))
