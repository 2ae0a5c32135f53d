"""Every bound the server puts on what a client sends, in one place (a leaf module: imports nothing of odal).

The server builds one ``Limits`` from its flags at start; the front ends and decoders read it and never check
options again.  Defaults are sized for this project's detectors (a 640x480 image is 0.9 MB as uint8, 4.8 MB as
REST JSON numbers; a 4K uint8 image 25 MB) on a 2-core, 24 GB machine; each has a flag (``server.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    # ---- REST (http_server.py) ---------------------------------------------------------------------------
    rest_max_body_bytes: int = 64 * MiB  # larger bodies: 413 before a byte of the body is read
    rest_max_header_bytes: int = 64 * 1024  # request line + headers; larger: 431/400 and the connection closes
    rest_request_timeout: float = 30.0  # TF Serving's --rest_api_timeout_in_ms: to receive a request, and to answer
    rest_idle_timeout: float = 30.0  # a keep-alive connection with no request in flight is closed after this
    rest_max_connections: int = 256  # open connections beyond this are answered 503 and closed
    rest_max_inflight_bytes: int = 512 * MiB  # request bodies held at once, all connections; beyond: 503
    rest_backlog: int = 1024  # listen(2) backlog (the kernel caps it at net.core.somaxconn)
    rest_workers: int = 0  # threads running requests (TF Serving's --rest_api_num_threads); 0 = 4 per CPU
    rest_max_error_chars: int = 1024  # an error message longer than this is cut (never echoes a whole input)
    # ---- gRPC (grpc_api.py) --------------------------------------------------------------------------------
    grpc_max_message_bytes: int = 64 * MiB  # receive and send; larger messages: RESOURCE_EXHAUSTED from gRPC
    grpc_max_concurrent_rpcs: int = 64  # RPCs in flight beyond this: RESOURCE_EXHAUSTED (queued ones hold memory)
    # ---- tensors (tensors.py, rest_json.py) ----------------------------------------------------------------
    max_tensor_bytes: int = 256 * MiB  # a tensor declaring a bigger shape is INVALID_ARGUMENT, nothing allocated
    max_fill_bytes: int = 1 * MiB  # TF's fill rule (fewer values than the shape) may expand a tensor this far

    @property
    def workers(self) -> int:
        return self.rest_workers if self.rest_workers > 0 else 4 * (os.cpu_count() or 1)


DEFAULT = Limits()

__all__ = ["DEFAULT", "Limits", "MiB"]
