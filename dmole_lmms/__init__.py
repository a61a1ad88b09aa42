"""The lmms-eval plugin: ``lmms-eval --model dmole --model_args workspace=W,after=T`` evaluates a trained dmole
model on any lmms-eval task. lmms-eval finds it through the ``lmms_eval.models`` entry point (pyproject.toml),
which names `manifests`; lmms-eval is imported only in this package (`pip install 'dmole[lmms]'`)."""

from __future__ import annotations

MODEL_ID = "dmole"


def manifests() -> list:
    """lmms-eval's registration payload: the ``dmole`` model, a simple (non-chat) implementation."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path="dmole.lmms.model.DMoLEModel")]
