"""The systemd unit: systemd's own verifier and security analysis on the real file, and install_service's output."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from odal.common.errors import ConfigError
from odal.daemon.commands.install_service import ENV_NAME, UNIT_NAME, install_service, render_unit

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / UNIT_NAME
ENV_FILE = REPO / "systemd" / ENV_NAME
VENV = Path(sys.prefix)  # the test venv, which has a real bin/odal-daemon
MAX_EXPOSURE = 2.5

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value assigned, in order (systemd allows repeating a key)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(unit: Path) -> None:
    """systemd-analyze verify exits 0 and says nothing about the unit (it only warns on unknown keys/values)."""
    proc = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if unit.name in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def supports_offline_security() -> bool:
    proc = subprocess.run([ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=60)
    return "--offline" in proc.stdout


def exposure(unit: Path) -> float:
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert proc.returncode == 0 and match, proc.stdout + proc.stderr
    return float(match.group(1))


def runnable_copy(tmp_path: Path) -> Path:
    """The real unit, byte for byte, except that ExecStart names an executable that exists on this machine."""
    text = UNIT.read_text()
    assert "ExecStart=/opt/odal/.venv/bin/odal-daemon " in text
    copy = tmp_path / UNIT_NAME
    copy.write_text(text.replace("/opt/odal/.venv/", f"{VENV}/"))
    return copy


REQUIRED = {
    "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "60", "Restart": "on-failure", "RestartSec": "10s",
    "TimeoutStopSec": "120", "KillMode": "mixed", "User": "odal", "Group": "odal",
    "EnvironmentFile": "-/etc/odal/odal-daemon.env",
    "ExecStart": "/opt/odal/.venv/bin/odal-daemon --config ${ODAL_CONFIG}",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/odal", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
    "ProtectHome": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "CapabilityBoundingSet": "", "AmbientCapabilities": "", "SystemCallArchitectures": "native",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "IPAddressDeny": "any", "IPAddressAllow": "localhost",
    "UMask": "0027", "StateDirectory": "odal", "LogsDirectory": "odal",
}


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_unit_sets_each_required_directive(key):
    """Each directive the deployment relies on is set, once, to the expected value."""
    service = parse_unit(UNIT.read_text())["Service"]
    assert service.get(key) == [REQUIRED[key]]


def test_syscall_filter_allows_system_services_minus_privileged_calls():
    """SystemCallFilter starts from @system-service and removes @privileged."""
    assert parse_unit(UNIT.read_text())["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged"]


def test_memory_deny_write_execute_stays_off():
    """MemoryDenyWriteExecute is not set: the TensorFlow worker's XLA JIT needs writable+executable memory."""
    assert "MemoryDenyWriteExecute" not in parse_unit(UNIT.read_text())["Service"]


def test_unit_and_env_file_default_to_the_same_config():
    """The unit's fallback ODAL_CONFIG equals the example EnvironmentFile's, so the file is optional."""
    service = parse_unit(UNIT.read_text())["Service"]
    env_lines = [line for line in ENV_FILE.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line) for line in env_lines), env_lines
    assert "ODAL_CONFIG=/var/lib/odal/odal.toml" in env_lines
    assert "ODAL_CONFIG=/var/lib/odal/odal.toml" in service["Environment"]


@needs_analyze
def test_real_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify accepts every directive of the real unit (ExecStart pointed at a real binary)."""
    verify(runnable_copy(tmp_path))


@needs_analyze
def test_verify_check_catches_a_misspelt_directive(tmp_path):
    """The verify check is not vacuous: an unknown key in the unit makes it fail."""
    copy = runnable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    with pytest.raises(AssertionError, match="ProtectClok"):
        verify(copy)


@needs_analyze
def test_real_unit_exposure_is_at_most_2_5(tmp_path):
    """systemd-analyze security --offline rates the unit's exposure at 2.5 or less."""
    if not supports_offline_security():
        pytest.skip("this systemd-analyze has no `security --offline` (added in systemd 250)")
    score = exposure(runnable_copy(tmp_path))
    print(f"exposure {score}")
    assert score <= MAX_EXPOSURE


@pytest.fixture
def installed(tmp_path, capsys):
    """install_service into temporary unit and env folders, with a workspace outside /var/lib/odal: in /dev/shm,
    since one under /tmp (PrivateTmp) or a home folder (ProtectHome) is refused."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm for a workspace outside /tmp and home")
    workspace = Path(tempfile.mkdtemp(prefix="odal-unit-", dir="/dev/shm"))
    try:
        (workspace / "odal.toml").write_text("")
        paths = install_service(tmp_path / "units", tmp_path / "etc-odal", VENV, workspace / "odal.toml", "odal")
        yield paths, workspace, capsys.readouterr().out
    finally:
        shutil.rmtree(workspace)


def test_install_service_writes_the_unit_and_env_file(installed, tmp_path):
    """It returns the two written paths, with the venv, config and env file substituted, mode 0644."""
    (unit, env_file), workspace, _ = installed
    assert unit == tmp_path / "units" / UNIT_NAME and env_file == tmp_path / "etc-odal" / ENV_NAME
    service = parse_unit(unit.read_text())["Service"]
    assert service["ExecStart"] == [f"{VENV}/bin/odal-daemon --config ${{ODAL_CONFIG}}"]
    assert service["EnvironmentFile"] == [f"-{env_file}"]
    assert f"ODAL_CONFIG={workspace}/odal.toml" in service["Environment"]
    assert service["ReadWritePaths"] == [f"/var/lib/odal {workspace}"]
    assert f"\nODAL_CONFIG={workspace}/odal.toml\n" in env_file.read_text()
    for path in (unit, env_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in unit.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_install_service_prints_systemctl_commands_without_running_them(installed):
    """By default it prints the daemon-reload and enable commands instead of running systemctl."""
    _, _, printed = installed
    assert "systemctl daemon-reload && systemctl enable --now odal-daemon" in printed
    assert "running:" not in printed


@needs_analyze
def test_installed_unit_passes_verify_and_keeps_its_exposure(installed):
    """The unit install_service writes still passes systemd-analyze verify and the exposure bound."""
    (unit, _), _, _ = installed
    verify(unit)
    if supports_offline_security():
        assert exposure(unit) <= MAX_EXPOSURE


def test_install_service_substitutes_the_user(tmp_path):
    """Another user name becomes both User= and Group=."""
    unit = render_unit(VENV, Path("/var/lib/odal/odal.toml"), "detector", Path("/etc/odal/odal-daemon.env"))
    service = parse_unit(unit)["Service"]
    assert service["User"] == ["detector"] and service["Group"] == ["detector"]
    assert service["ReadWritePaths"] == ["/var/lib/odal"]  # the default workspace needs no extra path


@pytest.mark.parametrize("venv, config, user, reason", [
    ("/opt/my venv", "/var/lib/odal/odal.toml", "odal", "escaped"),
    ("/opt/odal/.venv", "/var/lib/odal/100%.toml", "odal", "escaped"),
    ("/opt/odal/.venv", "/home/ann/odal.toml", "odal", "ProtectHome"),
    ("/opt/odal/.venv", "/var/lib/odal/odal.toml", "odal\nUser=root", "user name"),
    ("/opt/odal/.venv", "/tmp/ws/odal.toml", "odal", "under /tmp, which the service does not see .PrivateTmp=yes"),
    ("/opt/odal/.venv", "/var/tmp/odal.toml", "odal", "under /var/tmp"),
])
def test_render_unit_refuses_what_the_unit_cannot_express(venv, config, user, reason):
    """Paths needing escapes, a workspace hidden by ProtectHome, or a bad user name are refused clearly."""
    with pytest.raises(ConfigError, match=reason):
        render_unit(Path(venv), Path(config), user, Path("/etc/odal/odal-daemon.env"))


def test_install_service_refuses_a_venv_without_odal(tmp_path):
    """A venv without bin/odal-daemon is refused before anything is written."""
    with pytest.raises(ConfigError, match="odal-daemon"):
        install_service(tmp_path / "units", tmp_path / "env", tmp_path / "novenv", Path("/var/lib/odal/odal.toml"),
                        "odal")
    assert not (tmp_path / "units").exists()


def test_install_service_refuses_a_config_that_does_not_exist(tmp_path):
    """A unit naming a missing odal.toml would fail at every start: refused before anything is written."""
    with pytest.raises(ConfigError, match="odal.toml: no such file; write the workspace first"):
        install_service(tmp_path / "units", tmp_path / "env", VENV, Path("/var/lib/odal-missing/odal.toml"), "odal")
    assert not (tmp_path / "units").exists()
