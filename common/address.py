"""``HOST:PORT`` as odal.toml and the command lines spell a listen or connect address: one rule."""

from __future__ import annotations


def parse_address(address: str) -> tuple[str, int] | None:
    """``"127.0.0.1:9464"`` -> ("127.0.0.1", 9464); ``"[::1]:9464"`` -> ("::1", 9464); empty -> None.
    Raises ValueError unless there is a host and a port in 1..65535."""
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464), got {address!r}")
    return host, int(port)
