"""``odal install-service``: write the systemd unit and its environment file for this installation.

The unit is the repository's ``systemd/odal-daemon.service`` with the real virtualenv, user, configuration and
environment-file paths substituted; both files are written atomically with their final modes.  systemctl is run
only when asked: by default the commands to run are printed.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from odal.daemon.system.atomic import atomic_path
from odal.common.errors import ConfigError, OdalError

__all__ = ["UNIT_NAME", "ENV_NAME", "TEMPLATE_DIR", "render_unit", "render_env", "install_service"]

UNIT_NAME = "odal-daemon.service"
ENV_NAME = "odal-daemon.env"
# The unit and env templates ship in the source tree (installations run from a checkout, e.g. /opt/odal).
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "systemd"

_DEFAULT_VENV = "/opt/odal/.venv"
_DEFAULT_ENV_FILE = "/etc/odal/odal-daemon.env"
_DEFAULT_CONFIG = "/var/lib/odal/odal.toml"
_WORKSPACE = "/var/lib/odal"
_SYSTEMCTL = ("systemctl daemon-reload", "systemctl enable --now odal-daemon")
# Characters that need no quoting or escaping anywhere in a unit file or an EnvironmentFile.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@:,=-]*$")
_SAFE_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
PRIVATE_TMP = ("/tmp", "/var/tmp")  # PrivateTmp=yes: the service gets empty ones of its own


def _checked_path(name: str, path: Path) -> str:
    text = str(Path(path).absolute())
    if not _SAFE_PATH.match(text):
        raise ConfigError(f"{name}: {text!r} has characters a unit file would need escaped; use a plainer path")
    return text


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise OdalError(f"systemd template no longer contains {old!r}; update odal.daemon.commands.install_service")
    return text.replace(old, new)


def _template(name: str) -> str:
    path = TEMPLATE_DIR / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OdalError(f"{path}: unit template not found; install-service runs from a source checkout") from None


def render_unit(venv: Path, config: Path, user: str, env_file: Path) -> str:
    """The unit text for this installation.  A workspace outside /var/lib/odal is added to ReadWritePaths."""
    if not _SAFE_USER.match(user):
        raise ConfigError(f"user: {user!r} is not a valid system user name")
    venv_text = _checked_path("venv", venv)
    config_text = _checked_path("config", config)
    env_text = _checked_path("env file", env_file)
    workspace = str(Path(config_text).parent)
    if workspace == "/home" or workspace.startswith(("/home/", "/root", "/run/user")):
        raise ConfigError(f"config: {config_text} is in a home folder, which the unit hides (ProtectHome=yes)")
    for tmp in PRIVATE_TMP:
        if workspace == tmp or workspace.startswith(tmp + "/"):
            raise ConfigError(f"config: {config_text} is under {tmp}, which the service does not see (PrivateTmp=yes "
                              "gives it an empty one); move the workspace, e.g. to /var/lib/odal")
    text = _template(UNIT_NAME)
    text = _replace(text, f"ExecStart={_DEFAULT_VENV}/", f"ExecStart={venv_text}/")
    text = _replace(text, "\nUser=odal\nGroup=odal\n", f"\nUser={user}\nGroup={user}\n")
    text = _replace(text, f"Environment=ODAL_CONFIG={_DEFAULT_CONFIG}\n", f"Environment=ODAL_CONFIG={config_text}\n")
    text = _replace(text, f"EnvironmentFile=-{_DEFAULT_ENV_FILE}\n", f"EnvironmentFile=-{env_text}\n")
    if workspace != _WORKSPACE and not workspace.startswith(_WORKSPACE + "/"):
        text = _replace(text, f"\nReadWritePaths={_WORKSPACE}\n", f"\nReadWritePaths={_WORKSPACE} {workspace}\n")
    return text


def render_env(config: Path) -> str:
    """The EnvironmentFile text, naming this installation's configuration."""
    config_text = _checked_path("config", config)
    return _replace(_template(ENV_NAME), f"\nODAL_CONFIG={_DEFAULT_CONFIG}\n", f"\nODAL_CONFIG={config_text}\n")


def _write(path: Path, text: str, mode: int) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)


def install_service(unit_dir: Path, env_dir: Path, venv: Path, config: Path, user: str, *,
                    run_systemctl: bool = False, out: TextIO | None = None) -> list[Path]:
    """Write ``<unit_dir>/odal-daemon.service`` and ``<env_dir>/odal-daemon.env``; return the paths written.

    Prints the systemctl commands that load and start the unit (and a useradd hint if ``user`` does not exist);
    runs them only with ``run_systemctl=True``.  Both files are regenerated on every call.
    """
    out = sys.stdout if out is None else out
    venv = Path(venv).absolute()
    if not os.access(venv / "bin" / "odal-daemon", os.X_OK):
        raise ConfigError(f"venv: {venv}/bin/odal-daemon is missing or not executable; install odal there first")
    if not Path(config).is_file():
        raise ConfigError(f"config: {Path(config).absolute()}: no such file; write the workspace first (odal init) "
                          "and give its odal.toml")
    env_file = Path(env_dir).absolute() / ENV_NAME
    unit_file = Path(unit_dir).absolute() / UNIT_NAME
    unit_text = render_unit(venv, config, user, env_file)
    env_text = render_env(config)
    _write(env_file, env_text, 0o644)
    _write(unit_file, unit_text, 0o644)
    written = [unit_file, env_file]  # the caller reports them (the CLI prints "wrote <path>")
    try:
        pwd.getpwnam(user)
    except KeyError:
        print(f"user {user!r} does not exist; create it first:\n"
              f"  useradd --system --user-group --home-dir {_WORKSPACE} --shell /usr/sbin/nologin {user}", file=out)
    if run_systemctl:
        for command in _SYSTEMCTL:
            print(f"running: {command}", file=out)
            subprocess.run(command.split(), check=True)
    else:
        print("to load and start it, run:\n  " + " && ".join(_SYSTEMCTL), file=out)
    return written
