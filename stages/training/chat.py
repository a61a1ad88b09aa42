"""Turn training samples into model inputs and the answer-token cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.images import load_image
from ..data.samples import TrainSample


def chat_examples(samples: Sequence[TrainSample]) -> list:
    from ..models.base import ChatExample

    return [ChatExample(image=load_image(s.image), turns=list(s.turns)) for s in samples]


def text_length(sample: TrainSample) -> int:
    """A sample's conversation length in characters: what length grouping orders by (tokens would order the
    same samples almost identically, and need the tokenizer)."""
    return sum(len(human) + len(gpt) for human, gpt in sample.turns)


def supervised_tokens(labels: torch.Tensor) -> int:
    """How many tokens the shifted causal-LM loss averages over."""
    from ..models.base import IGNORE

    return int((labels[:, 1:] != IGNORE).sum())


def answer_loss(model: torch.nn.Module, adapter, samples: Sequence[TrainSample]) -> torch.Tensor:
    """Mean cross-entropy over the batch's supervised tokens (answers and their end-of-turn token)."""
    batch = adapter.train_batch(chat_examples(samples))
    return model(**batch).loss
