"""Command line: ``odal-daemon`` and ``odal COMMAND``.

Exit codes come only from here: 0 ok, 1 error, 2 configuration, 3 workspace locked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import version as package_version
from pathlib import Path

from odal.common.errors import OdalError
from odal.daemon import config as config_module
from odal.daemon.commands import workspace_args
from odal.daemon.commands.status import rounds_table, status_data  # noqa: F401 - their old home (demo, tests)
from odal.daemon.system import log as logs

DESCRIPTION = ("odal, the object-detection active-learning daemon: Prodigy annotations in, TF Serving model versions "
               "out. Every workspace command takes --workspace DIR (or its odal.toml) or --config FILE; without "
               "either, $ODAL_CONFIG, else ./odal.toml.")


def _run_daemon(config_path: Path) -> int:
    cfg = config_module.load(config_path)
    logs.configure(cfg.log_level, cfg.log_file, max_bytes=cfg.log_max_bytes, backups=cfg.log_backups)
    from odal.daemon.commands.check import local
    from odal.daemon.main import Daemon

    for finding in local(cfg):  # the same fast checks as odal check, in the log at start
        if not finding.ok:
            logs.get("odal.daemon").warning("check_problem", topic=finding.topic, problem=finding.text,
                                            fix=finding.fix)
    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    return daemon.run()


def _start_error(prog: str, error: OdalError) -> int:
    """A daemon start error, said once: in the log (stderr and the log file) once logging is set up, else on
    stderr."""
    import structlog

    if structlog.is_configured():
        logs.get("odal.daemon").error("daemon_error", error=str(error))
    else:
        print(f"{prog}: {error}", file=sys.stderr)
    return error.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odal", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"odal {package_version('odal')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("daemon", help="run the daemon in the foreground (same as odal-daemon)")
    workspace_args.add(p)
    p = sub.add_parser("check", help="find configuration, path, sandbox, server and device mistakes before a "
                       "round does; one line per problem with its fix (exit 1 if any)")
    workspace_args.add(p)
    p.add_argument("--unit", type=Path, default=None, help="the systemd unit to check the paths against "
                   "(default: /etc/systemd/system/odal-daemon.service, when installed)")
    p.add_argument("--no-devices", action="store_true", help="skip asking TensorFlow which devices it sees "
                   "(that starts TensorFlow in a child, a few seconds)")
    p = sub.add_parser("status", help="annotations, rounds and served versions of a workspace")
    workspace_args.add(p)
    p.add_argument("--json", action="store_true", help="everything as JSON (ISO times, rounded numbers)")
    p.add_argument("--watch", action="store_true", help="a live view: stage, step/total, loss, ETA, last rounds "
                   "(Ctrl-C ends it; plain lines when not on a terminal)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between --watch refreshes (default 1)")
    p = sub.add_parser("logs", help="the daemon's JSON log, one readable line per event (or piped: "
                       "journalctl -u odal-daemon -o cat | odal logs)")
    workspace_args.add(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep reading as the daemon writes")
    p.add_argument("--raw", action="store_true", help="the JSON lines as they are")
    p = sub.add_parser("rollback", help="take the newest (or given) version out of serving; TF Serving falls "
                       "back to the previous one")
    workspace_args.add(p)
    p.add_argument("version", nargs="?", type=int, help="the version number (default: the newest)")
    p.add_argument("--force", action="store_true", help="also when it is the last remaining version")
    p = sub.add_parser("restore", help="put a rolled-back version back into serving (undoes odal rollback)")
    workspace_args.add(p)
    p.add_argument("version", type=int, help="the version number")
    p.add_argument("--force", action="store_true", help="also a version quarantined because it did not serve")
    p = sub.add_parser("report", help="a static HTML page: plots per round, gate, timings, the model's boxes")
    workspace_args.add(p)
    p.add_argument("--out", help="the folder of the page (default: the work dir's report/)")
    p = sub.add_parser("retry", help="read every annotation source again from its start: lines fixed since they "
                       "were set aside are ingested, the rest stay set aside")
    workspace_args.add(p)
    p = sub.add_parser("demo", help="the whole loop on generated (or VOC) data with a simulated annotator")
    p.add_argument("--workspace", default="demo-workspace", help="the demo workspace folder to (re)create "
                   "(default: demo-workspace)")
    p.add_argument("--rounds", type=int, default=3, help="rounds to run (default 3)")
    p.add_argument("--images", help="a PASCAL VOC folder (images/ + annotations/) instead of generated shapes")
    p.add_argument("--per-round", type=int, default=None, help="annotations the annotator adds per round")
    p.add_argument("--steps", type=int, default=None, help="train steps per round")
    p.add_argument("--no-serve", action="store_true", help="do not start the embedded TF-Serving server")
    p.add_argument("--model", choices=("ssdlite", "tiny"), default="ssdlite",
                   help="ssdlite: fine-tune the pretrained start (default); tiny: the small SSD from scratch")
    sub.add_parser("serve", help="the embedded TF-Serving-compatible server (TF Serving's flags; odal serve --help)")
    from odal.daemon.commands import init as workspace_init

    workspace_init.add_parsers(sub)
    from odal.daemon.commands import simulate

    simulate.add_parser(sub)
    from odal.daemon.commands import train_worker

    train_worker.add_parsers(sub)
    p = sub.add_parser("install-service", help="write the systemd unit and environment file")
    workspace_args.add(p)
    p.add_argument("--user", default="odal", help="the system user the daemon runs as (default odal)")
    p.add_argument("--unit-dir", default="/etc/systemd/system", help="where the unit goes (default "
                   "/etc/systemd/system)")
    p.add_argument("--env-dir", default="/etc/odal", help="where odal-daemon.env goes (default /etc/odal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from odal.serving.server import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _command(args)
    except OdalError as error:
        if args.command == "daemon":
            return _start_error("odal", error)
        print(f"odal: {error}", file=sys.stderr)
        return error.exit_code


def _command(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        from odal.daemon.commands import simulate

        return simulate.run(args)
    if args.command in ("init", "pretrained"):
        from odal.daemon.commands import init as workspace_init

        return workspace_init.run(args)
    if args.command == "demo":
        from odal.daemon.commands.demo import run_demo

        logs.configure("warning")
        return run_demo(Path(args.workspace), args.rounds, Path(args.images) if args.images else None,
                        per_round=args.per_round, steps=args.steps, serve=not args.no_serve, model=args.model)
    config_path = workspace_args.config_path(args)
    if args.command == "daemon":
        return _run_daemon(config_path)
    if args.command == "check":
        from odal.daemon.commands import check

        return check.run(config_path, args.unit or check.check_sandbox.DEFAULT_UNIT, not args.no_devices)
    if args.command == "status":
        from odal.daemon.commands import status

        if args.watch:
            from odal.daemon.commands.watch import watch

            return watch(config_path, args.interval)
        data = status.status_data(config_path)
        if args.json:
            print(json.dumps(status.for_json(data), indent=2, default=str))
        else:
            status.print_status(data)
        return 0
    if args.command == "logs":
        from odal.daemon.commands import logs as logview

        piped = logview.stdin_is_piped()
        log_file = None if piped else config_module.load(config_path).log_file
        return logview.run(log_file, args.follow, args.raw, sys.stdin if piped else None)
    if args.command in ("rollback", "restore"):
        cfg = config_module.load(config_path)
        logs.configure("info", cfg.log_file, stream=open(os.devnull, "w"))  # recorded in the daemon's log
        from odal.daemon.commands import rollback  # after configure: loggers bind at import

        print(rollback.run(cfg, args.command, args.version, args.force))
        return 0
    if args.command == "report":
        from odal.daemon.commands import report

        print(report.run(config_module.load(config_path), args.out))
        return 0
    if args.command == "retry":
        from odal.daemon.commands.retry import retry

        print(retry(config_module.load(config_path)))
        return 0
    if args.command == "train-worker":
        from odal.daemon.commands import train_worker

        return train_worker.run(args, config_path)
    if args.command == "install-service":
        from odal.daemon.commands.install_service import install_service

        for path in install_service(Path(args.unit_dir), Path(args.env_dir), Path(sys.prefix), config_path,
                                    args.user):
            print(f"wrote {path}")
        return 0
    return 1


def daemon_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="odal-daemon", description="odal's daemon, in the foreground until "
                                     "SIGTERM/SIGINT; SIGHUP reloads the configuration; SIGUSR1 reads every "
                                     "annotation source again (odal retry)")
    parser.add_argument("--version", action="version", version=f"odal {package_version('odal')}")
    workspace_args.add(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run_daemon(workspace_args.config_path(args))
    except OdalError as error:
        return _start_error("odal-daemon", error)
