"""odal's errors: one small hierarchy in a leaf module (imports nothing of odal), each with a clear message."""

from __future__ import annotations


class OdalError(Exception):
    """Base of odal's own errors; ``exit_code`` is used only at the top (the CLI)."""

    exit_code = 1


class ConfigError(OdalError):
    """The configuration is missing, malformed or names a missing file. Names the key."""

    exit_code = 2


class WorkspaceLocked(OdalError):
    """Another daemon already runs on this workspace."""

    exit_code = 3


class InvalidRecord(OdalError):
    """One annotation record cannot be used; it is set aside, everything else goes on.

    ``image`` is set when the record itself is fine but its image file is missing, empty or cannot be decoded
    (yet): the resolved path the record waits for.  When that file appears or changes, the line is tried again.
    ``input_hash`` is set when the record's ``_input_hash`` could be read: a later good line of the same input
    takes the set-aside line off the list.
    """

    def __init__(self, message: str, image: str | None = None, input_hash: str | None = None) -> None:
        super().__init__(message)
        self.image = image
        self.input_hash = input_hash


class SchemaError(OdalError):
    """Prodigy's database does not have the schema odal reads."""

    exit_code = 2


class RoundFailed(OdalError):
    """A training round failed; the previous model keeps serving."""


class PublishError(OdalError):
    """A model version could not be published (or confirmed)."""
