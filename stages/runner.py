"""The common frame of every stage: skip when up to date, otherwise compute into an atomic new version."""

from __future__ import annotations

import hashlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmole.artifacts import Version, Writer, config_hash

from . import __version__
from .config import WORKSPACE_FILE
from .distributed import barrier, is_main, launch_settings, parts_folder
from .errors import UserError
from .project import Project
from .threads import thread_mismatch

# Files larger than this are fingerprinted by their size and a sample of their content instead of a full hash.
FULL_HASH_LIMIT = 256 * 1024 * 1024
SAMPLED_BLOCKS, BLOCK = 64, 1 << 20


@dataclass(frozen=True)
class StageResult:
    stage: str
    task: str
    version: Version
    up_to_date: bool
    seconds: float

    @property
    def warnings(self) -> list[str]:
        """One-line warnings the stage recorded with its version (shown again when it is up to date)."""
        return list(self.version.manifest.get("summary", {}).get("warnings", []))

    def as_json(self) -> dict:
        """What `--json` prints: the version the stage wrote or found up to date, and its warnings."""
        return {
            "stage": self.stage,
            "task": self.task,
            "version": self.version.number,
            "up_to_date": self.up_to_date,
            "path": str(self.version.path),
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.stage} {self.task}: up to date (v{self.version.number}), nothing written"
        outputs = self.version.manifest["outputs"]
        size = self.version.size_bytes / 1e6
        return (
            f"{self.stage} {self.task}: wrote v{self.version.number} ({len(outputs)} files, {size:.2f} MB) "
            f"to {self.version.path} in {self.seconds:.1f}s"
        )


def checkpoint_dir(project: Project, stage: str, task: str, config: dict) -> Path:
    """Where a run of ``stage`` keeps its resume checkpoints: one folder per configuration."""
    return project.root / ".runs" / stage / task / config_hash(config)[:16]


def _digest(path: Path, size: int) -> str:
    """sha256 of the file, or beyond FULL_HASH_LIMIT of its size and SAMPLED_BLOCKS evenly spaced blocks (the
    first and last included): its content alone, so that a copy fingerprints as the original does."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f"size={size}".encode())
        for i in range(SAMPLED_BLOCKS):
            handle.seek((size - BLOCK) * i // (SAMPLED_BLOCKS - 1))
            digest.update(handle.read(BLOCK))
    return f"sampled:{digest.hexdigest()}"


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """Content fingerprints of source files (data, model weights) by file name, so that a change makes results
    stale and a moved or copied file does not."""
    return {path.name: _digest(path, path.stat().st_size) for path in sorted(paths)}


def model_files(project) -> list[Path]:
    """The files of the workspace's model folder that make the model (weights, configs, tokenizer, template); a
    folder that is gone or holds no model is one UserError."""
    folder = project.model_path
    if not (folder / "config.json").is_file():
        problem = "holds no model (no config.json)" if folder.is_dir() else "is missing"
        raise UserError(
            f'the workspace\'s model folder {folder} ("model" in {project.root / WORKSPACE_FILE}) '
            f'{problem}; restore it or point "model" at the model the workspace was built on'
        )
    return [p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".jinja"}]


def model_fingerprint(project) -> dict:
    """What a stage's result depends on of the base model: its files and how the workspace feeds it images."""
    padded = project.config.image_aspect_ratio != "processor"  # the default adds no key: older versions stay current
    return {
        "files": fingerprint(model_files(project)),
        "max_tiles": project.config.max_tiles,
        **({"image_aspect_ratio": project.config.image_aspect_ratio} if padded else {}),
    }


def model_identity(project) -> str:
    """The identity of the workspace's model: one hash of its files' content (never of a path), recorded as the
    ``model`` source of every version and in embedding metadata. A missing model folder is one UserError."""
    return config_hash(fingerprint(model_files(project)))


def require_built_on_model(project, versions: list[Version]) -> dict[str, str]:
    """The workspace's sources (``{"model": identity}``) after checking that every version in ``versions`` was
    built on that model; one UserError naming the first that was not (a replaced model is never used with
    artifacts of another)."""
    sources = {"model": model_identity(project)}
    for version in versions:
        reasons = project.store.stale_sources(version, sources)
        if reasons:
            raise UserError(
                f"{reasons[0]} ({project.model_path}); re-run {version.stage} for {version.task} and "
                "the stages after it (`dmole ls` marks them stale)"
            )
    return sources


def source_fingerprint(project, task) -> dict:
    """What a stage's result depends on of one task: its data files and the base model."""
    from .data.tasks import task_files

    return {"data": fingerprint(task_files(project.data_root, task)), "model": model_fingerprint(project)}


def environment(seed: int) -> dict:
    """The software and launcher a version is computed with (world size, accelerate settings). Package
    versions come from their metadata, so recording them imports nothing."""
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "transformers", "peft")},
        "seed": seed,
        **launch_settings(),
    }


def device_environment() -> dict:
    """The device, the CUDA version torch was built with (None for a CPU build), the dtype and CPU thread count a
    stage that ran torch used; nothing for a stage that never imported torch."""
    if "torch" not in sys.modules:
        return {}
    import torch

    from .device import default_device, default_dtype, device_name

    device = default_device()
    # torch picks its CPU kernels by the instruction set (cpu_capability): another CPU model computes other sums,
    # so the numbers of a run are reproduced on the same kind of CPU, not on every one
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda,
        "dtype": str(default_dtype(device)).removeprefix("torch."),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _thread_mismatches(inputs: list[Version], threads: int | None) -> list[str]:
    """One line per input computed with another CPU thread count than this run (stages/threads.py)."""
    if threads is None:
        return []
    lines = (
        thread_mismatch(f"input {v}", threads, v.manifest.get("environment", {}).get("cpu_threads")) for v in inputs
    )
    return [line for line in lines if line]


def run_stage(
    project: Project,
    stage: str,
    task: str,
    *,
    config: dict,
    inputs: list[Version],
    compute: Callable[[Writer], None],
    force: bool = False,
) -> StageResult:
    """Return the current version if nothing changed (unless ``force``), else run ``compute`` into a new one.

    Under a launcher every process runs ``compute`` (sharing work through `distributed`); only the main
    process writes into the version, the others into a scratch folder that is dropped.
    """
    for version in inputs:  # a damaged input, or one built on another model, stops the stage before it writes
        version.verify()
    sources = require_built_on_model(project, inputs)
    refs = [v.ref() for v in inputs]
    start = time.perf_counter()
    current = None if force else project.store.find_current(stage, task, config_hash(config), refs, sources)
    barrier()  # every process decides before any of them can commit
    if current is not None:
        return StageResult(stage, task, current, True, 0.0)
    with parts_folder(project.root / ".runs" / "parts" / stage / task):
        if not is_main():
            with tempfile.TemporaryDirectory(prefix="dmole-rank-") as scratch:
                compute(Writer(Path(scratch)))
        else:
            recorded = environment(project.config.seed)
            with project.store.writer(
                stage,
                task,
                config=config,
                inputs=refs,
                sources=sources,
                environment=recorded,
                toolkit_version=__version__,
            ) as writer:
                compute(writer)
                recorded.update(device_environment())  # the manifest is written when the writer closes
                mismatches = _thread_mismatches(inputs, recorded.get("cpu_threads"))
                if mismatches:
                    writer.meta["warnings"] = [*writer.meta.get("warnings", []), *mismatches]
                writer.meta["seconds"] = round(time.perf_counter() - start, 3)
    # parts_folder ends with a barrier, so the main process has committed by now
    version = writer.version if is_main() else project.store.latest(stage, task)
    return StageResult(stage, task, version, False, time.perf_counter() - start)
