"""Run the embedded server (``python -m odal.serving.server``) as a child process on free loopback ports, for
``odal demo``, the benchmarks and the tests.

    with ServerProcess(root / "serve.log", "--model_name=odal", f"--model_base_path={base}") as server:
        ServingClient(server.address).wait_until_available("odal")

The child runs in its own session (so it does not get the caller's Ctrl-C) with stdout and stderr in one log
file; ``stop`` sends SIGTERM to its process group and SIGKILL if it has not exited in time.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from odal.common.processes import stop_process_group


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may still take it before it is used)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m odal.serving.server --port=P --rest_api_port=R *flags`` started at once; P and R are free
    loopback ports unless given (``rest_port=0`` turns REST off).  ``append`` keeps what ``log`` already holds."""

    def __init__(self, log: Path, *flags: str, port: int | None = None, rest_port: int | None = None,
                 append: bool = False):
        self.port = port or free_port()
        self.rest_port = free_port() if rest_port is None else rest_port
        with open(log, "ab" if append else "wb") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "odal.serving.server", f"--port={self.port}",
                 f"--rest_api_port={self.rest_port}", *flags],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def address(self) -> str:
        """The gRPC address, ``127.0.0.1:P``."""
        return f"127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        """The REST base URL, ``http://127.0.0.1:R``."""
        return f"http://127.0.0.1:{self.rest_port}"

    def stop(self, timeout: float = 20.0) -> None:
        stop_process_group(self.process, timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
