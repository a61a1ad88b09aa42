"""An opened workspace: its root, its artifact store and its validated configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dmole.artifacts import Workspace

from .config import WORKSPACE_FILE, ConfigError, WorkspaceConfig, parse_model, resolve_path
from .data.task_swap import complete_imports
from .resolve import check_workspace


def workspace_root(path: Path) -> Path:
    """The workspace folder ``path`` names: itself, or the folder of the workspace.json it names."""
    return path.parent if path.name == WORKSPACE_FILE and path.is_file() else path


@dataclass(frozen=True)
class Project:
    root: Path
    store: Workspace
    config: WorkspaceConfig

    @classmethod
    def open(cls, root: Path) -> Project:
        """The workspace at the folder ``root``, or the one whose workspace.json ``root`` names."""
        root = workspace_root(root)
        path = root / WORKSPACE_FILE
        if not path.is_file():
            raise ConfigError(
                f"no workspace at {root} (no {WORKSPACE_FILE}); run `dmole init` or `dmole synth`, "
                "or point --workspace / DMOLE_WORKSPACE at one"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        config = check_workspace(parse_model(WorkspaceConfig, raw, source=str(path)), source=str(path))
        project = cls(root=root, store=Workspace(root), config=config)
        complete_imports(project.data_root)  # a `dmole import` killed after its commit is finished before any read
        return project

    @property
    def model_path(self) -> Path:
        return resolve_path(self.root, self.config.model)

    @property
    def data_root(self) -> Path:
        return resolve_path(self.root, self.config.data)

    def load_model(self, *, max_tiles: int | None = None, **kwargs):
        """The workspace's base model and processor, with its image padding and its tile cap, or ``max_tiles``
        when given (heavy: imports torch)."""
        from .models.registry import load_family

        return load_family(
            self.model_path,
            trust_remote_code=self.config.trust_remote_code,
            max_tiles=self.config.max_tiles if max_tiles is None else max_tiles,
            pad_to_square=self.config.image_aspect_ratio == "pad",
            **kwargs,
        )


def write_workspace(root: Path, config: WorkspaceConfig) -> Path:
    """Validate and write ``workspace.json`` (atomically, through the store)."""
    root.mkdir(parents=True, exist_ok=True)
    Workspace(root).write_config(config.model_dump(mode="json", exclude_defaults=False))
    return root / WORKSPACE_FILE
