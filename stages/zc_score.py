"""Stage `zc-score`: the zero-cost gradient-norm proxy of every candidate module (spec/dmole.md §5).

On the frozen pretrained base with no experts, only candidate parameters require grad. Gradients of
the answer cross-entropy are accumulated (never zeroed) over M_s = max(4b, round(p N)) samples drawn
from a seeded permutation, summed across data-parallel ranks, and each module scores the sum of the
Frobenius norms of its parameters' accumulated gradients. A ``qkv`` group (``fuse_qkv``) scores as the fused
projection it was split from: per parameter (weight, bias), the norm of its members' gradients stacked, i.e.
sqrt(|G_q|^2 + |G_k|^2 + |G_v|^2), which is the Frobenius norm of the fused tensor's gradient. Images are cut into
at most ``max_tiles`` tiles (default 1: one whole-image view, as the reference scores them), whatever the
workspace's own cap.
"""

from __future__ import annotations

import random
import warnings

from dmole.artifacts import Writer
from dmole.artifacts.io import write_parquet

from .data.tasks import load_train_samples
from .dmole.allocation import round_half_up
from .options import ZcScoreOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import ZC_SCORE
from .resolve import stage_options
from .runner import StageResult, run_stage, source_fingerprint


def sample_count(n_train: int, options: ZcScoreOptions) -> int:
    return min(n_train, max(4 * options.batch_size, round_half_up(options.portion * n_train)))


def zc_score(
    project: Project,
    task_name: str,
    options: ZcScoreOptions | dict | None = None,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> StageResult:
    options = stage_options(project.config, ZC_SCORE.name, options)
    task = project.config.task(task_name)
    samples = load_train_samples(project.data_root, task)
    config = {"options": options.model_dump(), "task": hashed(task), "sources": source_fingerprint(project, task)}

    def compute(writer: Writer) -> None:
        import torch

        from .distributed import all_reduce_sum, my_share, rank_and_world
        from .training.chat import answer_loss

        adapter = project.load_model(max_tiles=options.max_tiles)
        model = adapter.model
        model.eval()  # dropout off, for determinism
        candidates = adapter.candidates(include_mlp=options.include_mlp, fuse=options.fuse_qkv)
        modules = dict(model.named_modules())
        for param in model.parameters():
            param.requires_grad_(False)
        # (candidate, parameter name) per parameter tensor: a group's members stack into one tensor per name
        ordered = [
            ((c, kind), param)
            for c in candidates
            for member in c.modules
            for kind, param in modules[member].named_parameters()
        ]
        for _, param in ordered:
            param.requires_grad_(True)
            param.grad = None
        order = list(range(len(samples)))
        random.Random(options.seed).shuffle(order)
        chosen = order[: sample_count(len(samples), options)]
        batches = [chosen[i : i + options.batch_size] for i in range(0, len(chosen), options.batch_size)]
        mine = my_share(batches)
        with progress(f"{ZC_SCORE.name} {task_name}", total=len(mine)) as bar:
            for batch in mine:
                answer_loss(model, adapter, [samples[i] for i in batch]).backward()
                bar.advance(1)
        # a parameter has a gradient if any process's batches gave it one; every process joins every sum
        reached = all_reduce_sum(
            torch.tensor([float(p.grad is not None) for _, p in ordered], device=model.device)
        ).tolist()
        missing = [c.name for ((c, _), _), flag in zip(ordered, reached) if not flag]
        squares: dict[tuple, float] = {}
        for (key, param), flag in zip(ordered, reached):
            if flag:
                local = param.grad.float() if param.grad is not None else torch.zeros_like(param, dtype=torch.float32)
                squares[key] = squares.get(key, 0.0) + float(all_reduce_sum(local).norm()) ** 2
        totals = dict.fromkeys((c.name for c in candidates), 0.0)
        for (candidate, _), square in squares.items():
            totals[candidate.name] += square**0.5
        rows = [(c, totals[c.name]) for c in candidates]
        if missing:
            warnings.warn(
                f"{len(missing)} candidate parameters got no gradient and score 0 (first: {missing[0]})", stacklevel=1
            )
        rows.sort(key=lambda item: (-item[1], item[0].name))
        write_parquet(
            writer.path(ZC_SCORE.files.scores),
            {
                "module": [c.name for c, _ in rows],
                "tower": [c.tower for c, _ in rows],
                "layer": [c.layer for c, _ in rows],
                "kind": [c.kind for c, _ in rows],
                "d_in": [c.d_in for c, _ in rows],
                "d_out": [c.d_out for c, _ in rows],
                "score": [score for _, score in rows],
                "n_samples": [len(chosen)] * len(rows),
            },
        )
        writer.meta.update(
            n_samples=len(chosen),
            n_batches=len(batches),
            n_candidates=len(rows),
            no_gradient=len(missing),
            world_size=rank_and_world()[1],
        )

    return run_stage(project, ZC_SCORE.name, task_name, config=config, inputs=[], compute=compute, force=force)
