"""Errors raised by the storage layer; each message is one line a user can act on."""


class ArtifactError(Exception):
    """Base class for storage errors."""


class MissingArtifact(ArtifactError):
    """An artifact, a version or one of its files does not exist."""


class TamperedArtifact(ArtifactError):
    """A file no longer matches the checksum recorded in its manifest."""


class LockedError(ArtifactError):
    """Another process is writing the same stage/task."""


class InvalidName(ArtifactError):
    """A stage or task name is not a safe folder name."""
