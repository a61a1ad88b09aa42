"""Read-only views of committed versions and references to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import MissingArtifact, TamperedArtifact
from .io import sha256_file


@dataclass(frozen=True)
class InputRef:
    """The exact upstream version a stage read."""

    stage: str
    task: str
    version: int
    content_hash: str


@dataclass(frozen=True)
class Version:
    """A committed `<stage>/<task>/v<N>` folder and its manifest."""

    stage: str
    task: str
    number: int
    path: Path
    manifest: dict = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.stage}/{self.task} v{self.number}"

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def created(self) -> str:
        return self.manifest["created"]

    @property
    def size_bytes(self) -> int:
        return sum(o["bytes"] for o in self.manifest["outputs"])

    def ref(self) -> InputRef:
        return InputRef(self.stage, self.task, self.number, self.content_hash)

    def file(self, name: str, verify: bool = True) -> Path:
        """Path of output `name` (e.g. "adapter/adapter_model.safetensors"), checksum-verified."""
        entry = next((o for o in self.manifest["outputs"] if o["path"] == name), None)
        if entry is None:
            raise MissingArtifact(f"{self} has no output '{name}'")
        path = self.path / name
        if not path.is_file():
            raise MissingArtifact(f"{path} is missing (listed in the manifest of {self})")
        if verify and (path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]):
            raise TamperedArtifact(f"{path} was modified after it was written (checksum does not match its manifest)")
        return path

    def verify(self) -> None:
        """Check every output against the manifest."""
        for o in self.manifest["outputs"]:
            self.file(o["path"])
