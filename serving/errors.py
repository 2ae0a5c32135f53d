"""Serving errors as TF Serving reports them: a canonical code (shared by gRPC, TF and TF Serving) and a message.

A leaf module: the server raises these and turns them into a gRPC status or a REST ``{"error": ...}`` answer; the
client raises them for a failed call, so callers can tell NOT_FOUND from UNAVAILABLE without importing grpc.
"""

from __future__ import annotations

from odal.common.errors import OdalError

# The canonical codes, in their numeric order (tensorflow.error.Code == grpc.StatusCode == google.rpc.Code).
CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)

# TF Serving's REST handler maps a failed status to an HTTP status this way (model_servers/http_server.cc).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


def code_value(name: str) -> int:
    """The number of a canonical code name (as in ``tensorflow.error.Code``)."""
    return CODES.index(name)


def code_name(value: int) -> str:
    return CODES[value] if 0 <= value < len(CODES) else "UNKNOWN"


class ServingError(OdalError):
    """A model-server call failed with ``code`` (a canonical code name, e.g. ``"NOT_FOUND"``) and ``message``."""

    def __init__(self, code: str, message: str):
        if code not in CODES or code == "OK":
            raise ValueError(f"not an error code: {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def capped(text: str, limit: int = 1024) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was left out (error messages never echo a
    whole input back)."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 0)
    return f"{text[:keep]}... ({len(text) - keep} more characters)"
