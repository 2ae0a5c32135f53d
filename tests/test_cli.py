"""The command line as a user meets it: one way to name a workspace for every command, help text everywhere,
``--version``, and a daemon start error said once."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import make_workspace
from odal.daemon import cli
from odal.daemon.system.lock import WorkspaceLock


@pytest.fixture
def workspace(tmp_path) -> Path:
    (tmp_path / "ws" / "images").mkdir(parents=True)
    return make_workspace(tmp_path / "ws", []).parent


def _forms(workspace: Path) -> dict[str, tuple[list[str], dict]]:
    toml = str(workspace / "odal.toml")
    return {"folder": (["--workspace", str(workspace)], {}), "toml": (["--workspace", toml], {}),
            "config": (["--config", toml], {}), "env": ([], {"ODAL_CONFIG": toml})}


@pytest.mark.parametrize("form", ["folder", "toml", "config", "env"])
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["retry"], ["check", "--no-devices"]])
def test_every_workspace_command_takes_the_folder_its_toml_config_or_odal_config(workspace, tmp_path, monkeypatch,
                                                                                  capsys, form, command):
    options, env = _forms(workspace)[form]
    monkeypatch.delenv("ODAL_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # not the workspace: the option or the environment must name it
    code = cli.main([*command, *options])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "odal.toml" not in out.err, out.err
    if command[0] == "retry":  # it read that workspace's ledger (and wrote nothing elsewhere)
        assert code == 0 and "no daemon is running" in out.out and (workspace / "work" / "ledger.sqlite").exists()
    else:
        assert str(workspace) in out.out and code in (0, 1)  # check: 1 = problems found (no server here)
    if command[0] == "check":
        assert "ok       config: valid" in out.out


def test_a_workspace_that_does_not_exist_is_named(tmp_path, capsys):
    assert cli.main(["status", "--workspace", str(tmp_path / "nope")]) == 2
    assert f"--workspace: no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert cli.main(["status", "--workspace", str(tmp_path), "--config", "x.toml"]) == 2
    assert "not both" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser, path: str = "odal"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_option_has_help_text_and_the_help_has_no_rest_markup(capsys):
    missing = [name for name, text in _options(cli.build_parser()) if not text]
    assert not missing, missing
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert "``" not in shown and ":class:" not in shown and "check" in shown


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("odal 0.")


def _daemon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odal.daemon", *args], capture_output=True, text=True, timeout=120)


def test_a_daemon_start_error_is_said_once(workspace, tmp_path):
    """Before and after logging is set up (a missing config; the workspace locked by another daemon)."""
    missing = _daemon("--config", str(tmp_path / "missing.toml"))
    both = missing.stdout + missing.stderr
    assert missing.returncode == 2 and both.count("no such configuration file") == 1, both
    lock = WorkspaceLock(workspace / "work")
    (workspace / "work").mkdir(exist_ok=True)
    config = workspace / "odal.toml"
    config.write_text(config.read_text().replace('export_dir = "exports"', 'export_dir = "exprots"'))
    lock.acquire()
    try:
        locked = _daemon("--workspace", str(workspace))
    finally:
        lock.release()
    both = locked.stdout + locked.stderr
    assert locked.returncode == 3 and both.count("daemon_error") == 1, both
    # the daemon ran odal check's local checks first: the mistyped export folder is named, with its fix
    problem = [json.loads(line) for line in locked.stderr.splitlines() if '"check_problem"' in line]
    assert [p["topic"] for p in problem] == ["prodigy.export_dir"] and "mkdir" in problem[0]["fix"], both
