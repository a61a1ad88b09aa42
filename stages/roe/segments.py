"""Which tokens feed the router (spec roe.md §3.1): per token a turn (−1 padding, 0 prefix, t ≥ 1 turn t)
and whether it belongs to its turn's question span.

Training reads the segments off input ids and labels; inference off the prompt alone, where the single
question runs through the end of the generation prompt. Both use the same prefix rule, so a one-turn
prompt segments exactly like turn 1 of a training conversation (T4).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch
from torch import Tensor

from ..models.base import IGNORE

# Image-block closing delimiters of the families that write one (InternVL, Qwen, Gemma 3); the prefix
# ends after them so that it holds the whole image block.
IMAGE_CLOSERS = ("</img>", "<|vision_end|>", "<end_of_image>")


@dataclass(frozen=True)
class ImageTokens:
    image: int
    closers: frozenset[int]

    @classmethod
    def of(cls, adapter) -> ImageTokens:
        tokenizer = adapter.tokenizer
        known = {tokenizer.convert_tokens_to_ids(t) for t in IMAGE_CLOSERS if t in tokenizer.get_vocab()}
        return cls(adapter.model.config.image_token_id, frozenset(known))


@dataclass(frozen=True)
class Segments:
    turn: Tensor  # [B, T] long
    is_question: Tensor  # [B, T] bool

    @property
    def n_turns(self) -> int:
        return max(1, int(self.turn.max()))

    def valid_turns(self) -> Tensor:
        """[B, n] bool: turns with at least one question token (the others are excluded everywhere)."""
        turns = torch.arange(1, self.n_turns + 1, device=self.turn.device)
        return ((self.turn[..., None] == turns) & self.is_question[..., None]).any(dim=1)

    def pooling(self) -> Tensor:
        """[B, 1 + n, T] fp32 row-normalised masks: row 0 the prefix, row t turn t's question tokens.
        The denominator is max(1, count), so an empty segment pools to zero."""
        turns = torch.arange(1, self.n_turns + 1, device=self.turn.device)
        prefix = (self.turn == 0)[:, None]
        questions = (self.turn[:, None] == turns[:, None]) & self.is_question[:, None]
        masks = torch.cat([prefix, questions], dim=1).float()
        return masks / masks.sum(dim=-1, keepdim=True).clamp(min=1.0)

    def counts(self) -> tuple[list[int], list[int]]:
        """Per row, the number of prefix tokens and of question tokens."""
        return (self.turn == 0).sum(1).tolist(), self.is_question.sum(1).tolist()


def _prefix_end(ids: list[int], limit: int, images: ImageTokens) -> int:
    """Index after the prefix: through the last image token before ``limit`` and its closing delimiter;
    0 (an empty prefix) when the first turn has no image."""
    last = max((i for i in range(limit) if ids[i] == images.image), default=-1)
    if last < 0:
        return 0
    while last + 1 < limit and ids[last + 1] in images.closers:
        last += 1
    return last + 1


def training_segments(input_ids: Tensor, labels: Tensor, attention_mask: Tensor, images: ImageTokens) -> Segments:
    """After the prefix, turn t is a run of unsupervised tokens (its question) then a run of supervised
    ones (its answer). Unsupervised tokens after the last answer join the last turn, outside its question."""
    turn = torch.full_like(input_ids, -1)
    question = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (ids, lab, mask) in enumerate(zip(input_ids.tolist(), labels.tolist(), attention_mask.tolist())):
        real = [i for i, m in enumerate(mask) if m]
        supervised = [lab[i] != IGNORE for i in real]
        first_answer = supervised.index(True) if True in supervised else len(real)
        start = _prefix_end([ids[i] for i in real], first_answer, images)
        turn[row, real[:start]] = 0
        t, k = 0, start
        for answer, run in groupby(supervised[start:]):
            positions = real[k : k + len(list(run))]
            k += len(positions)
            trailing = not answer and True not in supervised[k:]
            if (answer and t == 0) or (not answer and not trailing):
                t += 1  # a new turn; one whose answer follows the prefix directly has no question (invalid)
            turn[row, positions] = max(t, 1)
            question[row, positions] = not answer and not trailing
    return Segments(turn, question)


def prompt_segments(input_ids: Tensor, attention_mask: Tensor, images: ImageTokens) -> Segments:
    """A generation prompt: the prefix, then one question through the end of the prompt."""
    turn = torch.full_like(input_ids, -1)
    for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
        real = [i for i, m in enumerate(mask) if m]
        start = _prefix_end([ids[i] for i in real], len(real), images)
        for k, position in enumerate(real):
            turn[row, position] = 0 if k < start else 1
    return Segments(turn, turn == 1)
