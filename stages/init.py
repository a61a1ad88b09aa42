"""`dmole init`: write a workspace that points at a model folder, a data root and a task sequence."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError, TaskSpec, WorkspaceConfig, check_creatable, parse_model, require_folder
from .data.registry import REGISTRY_FILE, read_registry
from .project import write_workspace
from .resolve import check_workspace


def check_model_folder(model: Path) -> str:
    """The family of a local Hugging Face folder whose processor and chat template load (no weights read)."""
    from .models.registry import check_folder

    return check_folder(model).family


def select_tasks(available: list[TaskSpec], names: list[str] | None, *, source: str = "the registry") -> list[TaskSpec]:
    if not names:
        return available
    by_name = {task.name: task for task in available}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(f"unknown task {unknown[0]!r}; {source} has: {', '.join(by_name)}")
    return [by_name[name] for name in names]


def _portable(path: Path, workspace: Path) -> str:
    """Store paths relative to the workspace when possible, so a workspace can be moved with its data."""
    return os.path.relpath(path.resolve(), workspace.resolve())


def _benchmark_tasks(name: str, data: Path, names: list[str] | None) -> list[TaskSpec]:
    """The preset's tasks, after checking that ``data`` is laid out as the benchmark's archive."""
    from .data.benchmarks import benchmark

    preset = benchmark(name)
    specs = select_tasks(list(preset.tasks), names, source=f"benchmark {name!r}")
    if not (data / preset.marker).exists():
        hint = (
            f"; {data} looks like the archive's {preset.marker}/ folder itself: pass its parent {data.resolve().parent}"
            if data.resolve().name == preset.marker
            else ""
        )
        raise ConfigError(
            f"{data} has no '{preset.marker}' folder: the {name} benchmark's paths (e.g. "
            f"{specs[0].train}) are relative to the folder that holds the archive's "
            f"{preset.marker}/{hint}"
        )
    for spec in specs:
        for field in ("train", "eval", "eval_annotations", "image_root", "eval_image_root"):
            relative = getattr(spec, field)
            if relative and not (data / relative).exists():
                raise ConfigError(
                    f"benchmark {name!r}, task {spec.name!r}: {data / relative} ({field}) does not "
                    f"exist; the archive is expected as distributed"
                )
    return specs


def create_workspace(
    workspace: Path,
    *,
    model: Path,
    data: Path,
    tasks: list[str] | None = None,
    registry: Path | None = None,
    benchmark: str | None = None,
    overwrite: bool = False,
    **settings,
) -> WorkspaceConfig:
    """Write ``workspace.json``. The tasks come from ``registry`` (default ``DATA/tasks.json``) or from a
    benchmark preset (``benchmark``, stages/data/benchmarks.py); the two are mutually exclusive. ``settings`` are
    the workspace's other fields (`WorkspaceConfig`: method, seed, stages, profile, ...), its defaults below them."""
    if registry is not None and benchmark is not None:
        raise ConfigError(
            "--registry and --benchmark are mutually exclusive: a benchmark preset replaces the registry file"
        )
    if benchmark is not None:
        from .data.benchmarks import benchmark as preset

        preset(benchmark)  # an unknown name fails before anything else is checked
    require_folder(data, "data folder")
    require_folder(model, "model folder")
    check_model_folder(model)
    check_creatable(workspace, "--workspace")
    existing = workspace / "workspace.json"
    if existing.exists() and not overwrite:
        raise ConfigError(f"{existing} already exists; pass --overwrite to replace it")
    specs = (
        _benchmark_tasks(benchmark, data, tasks)
        if benchmark is not None
        else select_tasks(read_registry(registry or data / REGISTRY_FILE), tasks)
    )
    workspace.mkdir(parents=True, exist_ok=True)
    config = check_workspace(
        parse_model(
            WorkspaceConfig,
            {
                "model": _portable(model, workspace),
                "data": _portable(data, workspace),
                "tasks": [spec.model_dump(exclude_defaults=True) for spec in specs],
                **settings,
            },
            source="workspace",
        ),
        source="workspace",
    )
    write_workspace(workspace, config)
    return config
