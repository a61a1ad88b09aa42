"""Batched greedy generation for one task's evaluation samples (scoring them: grading.py).

Callers that change the model per batch (D-MoLE's per-sample experts, RoE's routing plan) pass
``around_batch``: a function of the batch's sample indices and model inputs returning a context
manager that is held while that batch generates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from ..config import TaskSpec
from ..data.images import load_image
from ..data.prompts import render_prompt
from ..data.samples import EvalSample
from ..distributed import merge_records, my_share
from ..progress import Progress, silent
from .grading import score_predictions  # noqa: F401 (stages/roe/evaluation.py imports it from here)

AroundBatch = Callable[[list[int], dict], AbstractContextManager]


@torch.no_grad()
def greedy_generate(
    adapter, model: torch.nn.Module, inputs: dict, *, max_new_tokens: int, min_new_tokens: int = 0
) -> torch.Tensor:
    """The toolkit's one decoding rule: greedy, one beam, no sampling, stop at the end-of-turn token."""
    return model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=adapter.end_token_ids,
        pad_token_id=adapter.tokenizer.pad_token_id,
    )


def batch_indices(n_samples: int, batch_size: int) -> list[list[int]]:
    """The batches predict() generates: consecutive runs of ``batch_size`` sample indices."""
    return [list(range(start, min(start + batch_size, n_samples))) for start in range(0, n_samples, batch_size)]


@torch.no_grad()
def predict(
    adapter,
    task: TaskSpec,
    samples: Sequence[EvalSample],
    *,
    batch_size: int = 8,
    model: torch.nn.Module | None = None,
    around_batch: AroundBatch | None = None,
    progress: Progress = silent,
    description: str | None = None,
) -> list[str]:
    """Greedy predictions (one beam, no sampling, left padding), whitespace-stripped, in sample order.

    Under a launcher each process generates its share of the batches (``around_batch`` sees only those)
    and every process returns all predictions; the batches are the single-process ones.
    """
    model = model if model is not None else adapter.model
    model.eval()
    max_new, min_new = task.generation_limits
    predictions: list[str] = []
    batches = my_share(batch_indices(len(samples), batch_size))
    with progress(description or f"eval {task.name}", total=sum(map(len, batches))) as bar:
        for indices in batches:
            chunk = [samples[i] for i in indices]
            predictions += generate_batch(
                adapter,
                model,
                [load_image(s.image) for s in chunk],
                [render_prompt(task, s) for s in chunk],
                max_new_tokens=max_new,
                min_new_tokens=min_new,
                around_batch=around_batch,
                indices=indices,
            )
            bar.advance(len(chunk))
    return merge_records(predictions)


@torch.no_grad()
def generate_batch(
    adapter,
    model: torch.nn.Module,
    images: list,
    prompts: list[str],
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    around_batch: AroundBatch | None = None,
    indices: list[int] | None = None,
) -> list[str]:
    """One batch's greedy replies, whitespace-stripped; ``around_batch`` sees the batch's sample ``indices``
    (default: 0..n-1) and its model inputs."""
    inputs = adapter.generation_batch(images, prompts)
    indices = list(range(len(prompts))) if indices is None else indices
    with around_batch(indices, inputs) if around_batch else nullcontext():
        output = greedy_generate(adapter, model, inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    return adapter.decode_new_tokens(output, inputs["input_ids"].shape[1])
