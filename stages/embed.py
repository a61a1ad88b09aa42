"""Stage `embed`: the frozen base model's sequence representation of every train and test sample.

s(x) = concat(max-pooled last vision-encoder states of the thumbnail, max-pooled final normed LM states
of the user turn alone, padding excluded), computed once with no experts (spec/dmole.md §3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmole.artifacts import Writer
from dmole.artifacts.io import fixed_size_float_list, write_parquet

from .config import TaskSpec
from .data.images import load_image
from .data.prompts import render_prompt
from .data.tasks import load_eval_samples, load_train_samples
from .distributed import merge_rows, my_share
from .dmole.embedding import embedding_metadata, sequence_embeddings
from .options import EmbedOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import EMBED
from .resolve import stage_options
from .runner import StageResult, model_identity, run_stage, source_fingerprint

SPLITS = ("train", "test")


def split_texts(project: Project, task: TaskSpec) -> dict[str, list[tuple[str, Path, str]]]:
    """Per split, (sample id, image path, user text) with every file validated before any model work."""
    train = load_train_samples(project.data_root, task)
    test = load_eval_samples(project.data_root, task)
    return {
        "train": [(s.id, s.image, s.question) for s in train],
        "test": [(s.id, s.image, render_prompt(task, s)) for s in test],
    }


def compute_embeddings(
    adapter,
    items: list[tuple[str, Path, str]],
    batch_size: int,
    progress: Progress = silent,
    description: str = "embedding",
) -> np.ndarray:
    """The sequence embeddings of ``items`` in order; under a launcher each process embeds its share of the
    batches (the single-process ones) and every process returns the whole matrix."""
    rows = [np.zeros((0, adapter.d_vision + adapter.d_language), np.float32)]
    batches = my_share(range(0, len(items), batch_size))
    with progress(description, total=sum(len(items[start : start + batch_size]) for start in batches)) as bar:
        for start in batches:
            chunk = items[start : start + batch_size]
            rows.append(
                sequence_embeddings(adapter, [load_image(path) for _, path, _ in chunk], [text for _, _, text in chunk])
            )
            bar.advance(len(chunk))
    return merge_rows(np.concatenate(rows).astype(np.float32))


def embed(
    project: Project,
    task_name: str,
    options: EmbedOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    options = stage_options(project.config, EMBED.name, options)
    task = project.config.task(task_name)
    splits = split_texts(project, task)
    config = {"options": options.model_dump(), "task": hashed(task), "sources": source_fingerprint(project, task)}

    def compute(writer: Writer) -> None:
        adapter = project.load_model()
        metadata = embedding_metadata(adapter, model_identity(project))
        for split, items in splits.items():
            matrix = compute_embeddings(adapter, items, options.batch_size, progress, f"embed {task_name} {split}")
            write_parquet(
                writer.path(EMBED.files.split.format(split=split)),
                {
                    "sample_id": [sample_id for sample_id, _, _ in items],
                    "task": [task_name] * len(items),
                    "split": [split] * len(items),
                    "embedding": fixed_size_float_list(matrix),
                },
                metadata=metadata,
            )
            writer.meta[f"n_{split}"] = len(items)
        writer.meta.update(dim=int(matrix.shape[1]), **metadata)

    return run_stage(project, EMBED.name, task_name, config=config, inputs=[], compute=compute, force=force)
