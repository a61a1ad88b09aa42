"""`dmole synth`: the synthetic benchmark, its pre-trained tiny base model and a ready workspace.

Layout under OUT: ``data/`` (the five tasks in the D-MoLE layout, ``tasks.json``, and the generic
``pretrain/`` mixture), ``base-model/`` (a normal Hugging Face folder), ``workspace/`` (workspace.json)
and ``synth.json`` (what was generated, written last: without it nothing counts as done).

A folder is never lost to a new recipe: everything is built in a hidden staging folder and moved in only when
complete, and a folder that holds another recipe's benchmark (its workspace may hold days of artifacts) or parts
that synth did not write is refused unless ``force`` says to replace it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import __version__
from .config import ConfigError, check_creatable
from .data.synthetic import SynthSizes, attribute_scenes, pretraining_mixture, write_benchmark
from .data.training_file import read_training_file
from .init import create_workspace
from .pretrain import PretrainSettings, pretrain, pretrain_vision
from .progress import Progress, silent
from .registry import EVAL, FIT_ROUTER, ROUTE_TRAIN, TRAIN_TASK, ZC_SCORE

MARKER = "synth.json"
PARTS = ("data", "base-model", "workspace")
STAGING = ".synth.partial"
FAMILIES = ("llava", "internvl", "qwen2vl")

# Stage options for this benchmark's tiny model, written into workspace.json (overridable there or per
# command). The paper's values target a 2B model and ~10k-sample tasks:
# - a randomly initialised 128-wide model adapts with a larger learning rate and a few epochs;
# - routers: the reference fits ~11k samples in batches of 1024 (11 steps an epoch); with a few hundred
#   samples, batches of 32 give a comparable number of steps before the patience rule stops training,
#   and q = 0.99 places the threshold just above the in-task error range (q = 0.95 would reject 5% of a
#   task's own inputs by construction). The reference's sigmoid output cannot match the negative entries
#   of the normalised embedding; on this model that error floor dominates every router's error, leaves
#   in-task and out-of-task errors too close for the threshold to filter a wrong second expert, and the
#   unweighted sum of two experts then corrupts the answer. Without it (the spec's `none`) the two
#   error ranges separate.
# - thresholds are read at inference with threshold_scale 2: with a few hundred fit samples the
#   in-sample quantile is optimistic (held-out in-task errors reach ~1.5 x tau), while every other
#   task's errors stay above ~5 x tau, so the scaled threshold keeps a task's own inputs and still
#   rejects the rest (the paper reports stable results for thresholds within the same order).
# - zero-cost scores include the MLP projections (the spec's optional include_mlp), so that at the
#   default budget of half the candidates an expert has about the baselines' parameter count; the
#   tasks here lean on memorising small vocabularies, which MLP projections carry.
STAGE_DEFAULTS: dict[str, dict] = {
    FIT_ROUTER.name: {"batch_size": 32, "quantile": 0.99, "output_activation": "none"},
    ZC_SCORE.name: {"include_mlp": True},
    TRAIN_TASK.name: {"lr": 3e-3, "epochs": 4, "batch_size": 16},
    EVAL.name: {"batch_size": 16, "threshold_scale": 2.0},
    # RoE (docs/roe.md): the tiny base has never seen the tasks, so the backbone must learn them while the
    # routers learn to skip; a short router warm-up (stage 2 from 30% of the steps) keeps the skip rate
    # near the target instead of overshooting. The hinge weight exp(−γ·CE) with the spec's γ = 5 is ~1e-4 at
    # this base's CE of ~2 when the routers start (the spec presumes a model already tuned on its data), so
    # γ = 1, on the hard skip share (straight-through), as inference counts it. The routers' logits are of
    # order 1 here, so τ₀ = 1 rather than 10 (which left every layer half executed, half skipped), and each
    # router starts from a fixed prior measured on training data: the layers whose output changes their
    # input least are skipped first (router_prior redundancy, margin 1). λ = 4: with λ = 1 each layer's share of
    # the hinge (λ·exp(−γ·CE)/|L_r|, ~0.03 CE) is below what skipping even a redundant layer costs here, and the
    # 24-layer base skipped 13 % for ρ 0.3; λ = 4 holds the training log's hard skip at ρ (docs/benchmarks.md).
    # RoE then starts from the dense twin (warm_start), as the paper trains RoE on LLaVA-1.5, already tuned on its
    # data: the routers learn to skip on a model that knows the tasks, and scores are relative to the twin trained
    # on for the same steps.
    ROUTE_TRAIN.name: {
        "epochs": 3,
        "roe_lr": 3e-3,
        "backbone_lr": 1e-3,
        "stage2_start": 0.3,
        "hinge_gamma": 1.0,
        "hinge_weight": 4.0,
        "skip_estimate": "straight-through",
        "tau0": 1.0,
        "router_prior": "redundancy",
        "warm_start": True,
    },
}


def tiny_size(sizes: SynthSizes = SynthSizes(), *, lm_layers: int | None = None, lm_hidden: int | None = None):
    """The base's dimensions for ``sizes``' images: the defaults, with the language model's depth and width (its
    MLP 2·D wide) as given."""
    from .models.tiny import TinySize

    base = TinySize(image_size=sizes.image_size)
    hidden = lm_hidden or base.lm_hidden
    return replace(base, lm_layers=lm_layers or base.lm_layers, lm_hidden=hidden, lm_intermediate=2 * hidden)


@dataclass
class SynthResult:
    out: Path
    family: str
    tasks: list[str]
    seconds: float
    reused: bool
    pretrain_loss: list[float] = field(default_factory=list)

    @property
    def workspace(self) -> Path:
        return self.out / "workspace"

    def summary(self) -> str:
        if self.reused:
            return f"synth: {self.out} already holds the {self.family} benchmark (seed unchanged); nothing written"
        loss = (
            f", pre-training loss {self.pretrain_loss[0]:.2f} -> {self.pretrain_loss[-1]:.2f}"
            if self.pretrain_loss
            else ""
        )
        return (
            f"synth: wrote {len(self.tasks)} tasks, a pre-trained {self.family} base and a workspace to "
            f"{self.out} in {self.seconds:.1f}s{loss}; next: `export DMOLE_WORKSPACE={self.workspace}`"
        )


def _recipe(family: str, seed: int, sizes: SynthSizes, pretraining: PretrainSettings, tiny) -> dict:
    return {
        "family": family,
        "seed": seed,
        "sizes": asdict(sizes),
        "pretrain": asdict(pretraining),
        "tiny": asdict(tiny),
        "toolkit_version": __version__,
    }


def _held_recipe(out: Path) -> dict | None:
    """The recipe of the benchmark ``out`` holds: None without a marker, {} for one no one can read."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        held = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def _check_replaceable(out: Path, held: dict | None, recipe: dict, force: bool) -> None:
    """A one-line error unless building ``recipe`` in ``out`` replaces nothing but, under ``force``, synth's own."""
    if held is None:
        if found := [part for part in PARTS if (out / part).exists()]:
            raise ConfigError(
                f"--out {out} holds {found[0]}/, which `dmole synth` did not write (no {MARKER}); choose another "
                "--out, or move it away"
            )
        return
    if not force:
        changed = ", ".join(
            f"{key} {held[key]!r} -> {value!r}" if key in held and not isinstance(value, dict) else key
            for key, value in recipe.items()
            if held.get(key) != value
        )
        raise ConfigError(
            f"--out {out} holds the synthetic benchmark of another recipe ({changed}); replacing it deletes its "
            "workspace and every artifact in it: choose another --out, or pass --force to `dmole synth`"
        )


def _move_in(staging: Path, out: Path, recipe: dict) -> None:
    """Replace ``out``'s parts by the staged ones, then write the marker that says they are whole."""
    (out / MARKER).unlink(missing_ok=True)
    for part in PARTS:
        shutil.rmtree(out / part, ignore_errors=True)
        (staging / part).rename(out / part)
    staging.rmdir()
    (out / MARKER).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")


def synthesize(
    out: Path,
    *,
    family: str = "llava",
    seed: int = 0,
    force: bool = False,
    sizes: SynthSizes = SynthSizes(),
    pretraining: PretrainSettings | None = None,
    tiny=None,
    progress: Progress = silent,
) -> SynthResult:
    from .models.registry import load_family
    from .models.tiny import build_tiny

    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    check_creatable(out, "--out")
    tiny = tiny or tiny_size(sizes)
    pretraining = pretraining or PretrainSettings(seed=seed)
    recipe = _recipe(family, seed, sizes, pretraining, tiny)
    held = _held_recipe(out)
    if held == recipe and not force:
        tasks = json.loads((out / "data" / "tasks.json").read_text(encoding="utf-8"))["tasks"]
        return SynthResult(out, family, [t["name"] for t in tasks], 0.0, reused=True)
    _check_replaceable(out, held, recipe, force)

    start = time.perf_counter()
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    data, model = staging / "data", staging / "base-model"
    registry = write_benchmark(data, seed=seed, sizes=sizes)
    pretraining_mixture(data, seed=seed, sizes=sizes)
    mixture = read_training_file(data / "pretrain" / "train.jsonl", data_root=data, image_root=data)
    build_tiny(family, model, seed=seed, size=tiny, byte_tokenizer=True)
    adapter = load_family(model)
    pretrain_vision(adapter, *attribute_scenes(seed=seed, sizes=sizes), settings=pretraining, progress=progress)
    log = pretrain(adapter, mixture, pretraining, progress)
    adapter.save(model)
    # workspace.json holds the model and data relative to itself, so the workspace moves with them
    create_workspace(staging / "workspace", model=model, data=data, seed=42, stages=STAGE_DEFAULTS, overwrite=True)
    _move_in(staging, out, recipe)
    return SynthResult(
        out,
        family,
        [t["name"] for t in registry],
        time.perf_counter() - start,
        reused=False,
        pretrain_loss=[row["loss"] for row in log],
    )
