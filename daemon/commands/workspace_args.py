"""One meaning of "which workspace" for every command: ``--workspace DIR``, ``--workspace DIR/odal.toml``,
``--config FILE``, else ``$ODAL_CONFIG`` (the systemd environment file sets it), else ``./odal.toml``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from odal.common.errors import ConfigError

ENV = "ODAL_CONFIG"


def add(parser: argparse.ArgumentParser) -> None:
    """The two options every workspace command takes."""
    parser.add_argument("--workspace", metavar="DIR|FILE.toml",
                        help="the workspace folder, or its odal.toml (default: $ODAL_CONFIG, else ./odal.toml)")
    parser.add_argument("--config", metavar="FILE", help="the workspace's odal.toml (same as --workspace FILE)")


def config_path(args: argparse.Namespace, environ=os.environ) -> Path:
    """The odal.toml the command's options (or the environment) name."""
    workspace, config = getattr(args, "workspace", None), getattr(args, "config", None)
    if workspace and config:
        raise ConfigError("give --workspace or --config, not both")
    chosen = config or workspace or environ.get(ENV) or "."
    path = Path(chosen).expanduser()
    if path.is_dir():
        return (path / "odal.toml").resolve()
    if config is None and workspace is not None and not path.exists() and path.suffix != ".toml":
        raise ConfigError(f"--workspace: no such folder: {path.resolve()}")
    return path.resolve()
