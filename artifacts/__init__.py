"""Storage layer: a workspace of versioned, checksummed artifacts (no torch, no stages)."""

from .errors import ArtifactError, InvalidName, LockedError, MissingArtifact, TamperedArtifact
from .manifest import config_hash
from .version import InputRef, Version
from .workspace import Workspace
from .writer import Writer

__all__ = [
    "ArtifactError",
    "InputRef",
    "InvalidName",
    "LockedError",
    "MissingArtifact",
    "TamperedArtifact",
    "Version",
    "Workspace",
    "Writer",
    "config_hash",
]
