"""The systemd sandbox against a workspace's paths: what the installed unit hides (PrivateTmp, ProtectHome) or
leaves read-only (ProtectSystem=strict outside ReadWritePaths and the unit's state, cache and log folders)."""

from __future__ import annotations

from pathlib import Path

from odal.daemon.config import Config

DEFAULT_UNIT = Path("/etc/systemd/system/odal-daemon.service")
_TMP = ("/tmp", "/var/tmp")
_HOME = ("/home", "/root", "/run/user")
_DIRECTORY_ROOTS = {"StateDirectory": "/var/lib", "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log",
                    "RuntimeDirectory": "/run"}


def read_unit(text: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: key -> every value given (in order; an empty one resets)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        if sep and section == "Service":
            values = settings.setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return settings


def _under(path: Path, roots) -> str | None:
    text = str(path)
    return next((root for root in roots if text == root or text.startswith(root.rstrip("/") + "/")), None)


def _yes(settings: dict, key: str) -> str:
    return (settings.get(key) or ["no"])[-1].lower()


def _paths(cfg: Config) -> tuple[dict[str, Path], dict[str, Path]]:
    """(read, written): the paths the daemon reads and the ones it writes, by setting name."""
    read = {"paths.data_dir": cfg.data_dir, "model.pipeline_config": cfg.pipeline_config,
            "model.label_map": cfg.label_map, "config": cfg.path}
    if cfg.prodigy_db is not None:
        read["prodigy.database"] = cfg.prodigy_db
    if cfg.fine_tune_checkpoint:
        read["model.fine_tune_checkpoint"] = Path(cfg.fine_tune_checkpoint)
    written = {"paths.work_dir": cfg.work_dir, "model.base_path": cfg.base_path}
    if cfg.export_dir is not None:
        read["prodigy.export_dir"] = cfg.export_dir
    if cfg.log_file is not None:
        written["log.file"] = cfg.log_file.parent
    return read, written


def problems(cfg: Config, unit_text: str) -> list[tuple[str, str]]:
    """(problem, fix) for each path the unit would hide or keep read-only."""
    settings = read_unit(unit_text)
    read, written = _paths(cfg)
    found = []
    for name, path in {**read, **written}.items():
        if _yes(settings, "PrivateTmp") in ("yes", "true", "1", "on") and (tmp := _under(path, _TMP)):
            found.append((f"{name} {path} is under {tmp}, which the service does not see (PrivateTmp=yes)",
                          "move it out of /tmp (e.g. under /var/lib/odal) and update odal.toml"))
        elif _yes(settings, "ProtectHome") in ("yes", "true", "1", "on", "tmpfs") and _under(path, _HOME):
            found.append((f"{name} {path} is in a home folder, which the service does not see (ProtectHome=yes)",
                          "move it out of the home folder (e.g. under /var/lib/odal) and update odal.toml"))
    if _yes(settings, "ProtectSystem") == "strict":
        writable = [p for value in settings.get("ReadWritePaths", []) for p in value.split()]
        writable += [f"{_DIRECTORY_ROOTS[key]}/{name}" for key in _DIRECTORY_ROOTS
                     for value in settings.get(key, []) for name in value.split()]
        writable = [p.lstrip("-+") for p in writable]
        for name, path in written.items():
            if not _under(path, _TMP + _HOME) and not _under(path, writable):
                found.append((f"{name} {path} is read-only for the service (ProtectSystem=strict; writable: "
                              f"{' '.join(writable) or 'nothing'})",
                              f"add {path} to ReadWritePaths= (odal install-service does it for the workspace)"))
    return found
