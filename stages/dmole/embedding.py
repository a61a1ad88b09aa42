"""The sequence representation the routers score (spec/dmole.md §3), for one batch of images and user texts:
concat(max-pooled last vision-encoder states of the thumbnail, max-pooled final normed LM states of the user turn
alone, padding excluded), on the frozen base. `embed` caches it per sample; the lmms-eval plugin computes it for
samples it is handed (stages/harness.py)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def embedding_metadata(adapter, model: str) -> dict[str, str]:
    """What an embedding depends on besides the sample: routers refuse embeddings computed otherwise. ``model`` is
    the model's identity (stages/runner.py `model_identity`: its content, never the path it was loaded from)."""
    template = adapter.processor.chat_template or ""
    return {
        "model": model,
        "family": adapter.family,
        "d_vision": str(adapter.d_vision),
        "d_language": str(adapter.d_language),
        "pooling": "max/max-nonpad",
        "dtype": "float32",
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
    }


def sequence_embeddings(adapter, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """[batch, d_vision + d_language] float32; a sample's row is the same alone or in any batch, which is
    also why a text repeated in the batch (a task's fixed instruction) is run through the LM only once."""
    vision = adapter.vision_features(images)
    unique = {text: row for row, text in enumerate(dict.fromkeys(texts))}
    language = adapter.text_features(list(unique))[[unique[text] for text in texts]]
    return np.concatenate([vision.float().cpu().numpy(), language.float().cpu().numpy()], axis=1).astype(np.float32)
