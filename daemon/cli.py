"""Command line: ``odal-daemon --config FILE`` and ``odal {daemon,status,logs,rollback,retry,demo,serve,install-service,
init,pretrained}``.

Exit codes come only from here: 0 ok, 1 error, 2 configuration, 3 workspace locked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from odal.daemon import config as config_module
from odal.daemon.commands import status
from odal.daemon.system import log as logs
from odal.common.errors import OdalError


def _run_daemon(config_path: str) -> int:
    cfg = config_module.load(config_path)
    logs.configure(cfg.log_level, cfg.log_file, max_bytes=cfg.log_max_bytes, backups=cfg.log_backups)
    from odal.daemon.main import Daemon

    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    return daemon.run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from odal.serving.server import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="odal", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("daemon", help="run the daemon in the foreground (same as odal-daemon)")
    p.add_argument("--config", required=True)
    p = sub.add_parser("status", help="annotations, rounds and served versions of a workspace")
    p.add_argument("--workspace", default=".")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("logs", help="the daemon's JSON log, one readable line per event (or piped: "
                       "journalctl -u odal-daemon -o cat | odal logs)")
    p.add_argument("--workspace", default=".")
    p.add_argument("-f", "--follow", action="store_true", help="keep reading as the daemon writes")
    p.add_argument("--raw", action="store_true", help="the JSON lines as they are")
    p = sub.add_parser("rollback", help="take the newest (or given) version out of serving; TF Serving falls "
                       "back to the previous one")
    p.add_argument("--workspace", default=".")
    p.add_argument("version", nargs="?", type=int, help="the version number (default: the newest)")
    p.add_argument("--force", action="store_true", help="also when it is the last remaining version")
    p = sub.add_parser("retry", help="read every annotation source again from its start: lines fixed since they "
                       "were set aside are ingested, the rest stay set aside")
    p.add_argument("--workspace", default=".")
    p = sub.add_parser("demo", help="the whole loop on generated (or VOC) data with a simulated annotator")
    p.add_argument("--workspace", default="demo-workspace")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", help="a PASCAL VOC folder (images/ + annotations/) instead of generated shapes")
    p.add_argument("--per-round", type=int, default=None, help="annotations the annotator adds per round")
    p.add_argument("--steps", type=int, default=None, help="train steps per round")
    p.add_argument("--no-serve", action="store_true", help="do not start the embedded TF-Serving server")
    p.add_argument("--model", choices=("ssdlite", "tiny"), default="ssdlite",
                   help="ssdlite: fine-tune the pretrained start (default); tiny: the small SSD from scratch")
    sub.add_parser("serve", help="the embedded TF-Serving-compatible server (TF Serving's flags)")
    from odal.daemon.commands import init as workspace_init

    workspace_init.add_parsers(sub)
    p = sub.add_parser("install-service", help="write the systemd unit and environment file")
    p.add_argument("--config", required=True)
    p.add_argument("--user", default="odal")
    p.add_argument("--unit-dir", default="/etc/systemd/system")
    p.add_argument("--env-dir", default="/etc/odal")
    args = parser.parse_args(argv)
    try:
        if args.command == "daemon":
            return _run_daemon(args.config)
        if args.command == "status":
            data = status.status_data(Path(args.workspace))
            if args.json:
                print(json.dumps(data, indent=2, default=str))
            else:
                status.print_status(data)
            return 0
        if args.command == "logs":
            from odal.daemon.commands import logs as logview

            piped = logview.stdin_is_piped()
            log_file = None if piped else config_module.load(config_module.workspace_config(args.workspace)).log_file
            return logview.run(log_file, args.follow, args.raw, sys.stdin if piped else None)
        if args.command == "rollback":
            cfg = config_module.load(config_module.workspace_config(args.workspace))
            logs.configure("info", cfg.log_file, stream=open(os.devnull, "w"))  # recorded in the daemon's log
            from odal.daemon.commands.rollback import rollback  # after configure: loggers bind at import

            done = rollback(cfg, args.version, args.force)
            serving = done["serving"] if done["serving"] is not None else "nothing"
            print(f"version {done['version']} moved to {done['moved_to']}; TF Serving now serves {serving}")
            return 0
        if args.command == "retry":
            from odal.daemon.commands.retry import retry

            print(retry(config_module.load(config_module.workspace_config(args.workspace))))
            return 0
        if args.command == "demo":
            from odal.daemon.commands.demo import run_demo

            logs.configure("warning")
            return run_demo(Path(args.workspace), args.rounds, Path(args.images) if args.images else None,
                            per_round=args.per_round, steps=args.steps, serve=not args.no_serve,
                            model=args.model)
        if args.command in ("init", "pretrained"):
            from odal.daemon.commands import init as workspace_init

            return workspace_init.run(args)
        if args.command == "install-service":
            from odal.daemon.commands.install_service import install_service

            for path in install_service(Path(args.unit_dir), Path(args.env_dir), Path(sys.prefix),
                                        Path(args.config).resolve(), args.user):
                print(f"wrote {path}")
            return 0
    except OdalError as error:
        print(f"odal: {error}", file=sys.stderr)
        return error.exit_code
    return 1


def daemon_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="odal-daemon", description="odal's daemon, in the foreground until "
                                     "SIGTERM/SIGINT; SIGHUP reloads the configuration; SIGUSR1 reads every "
                                     "annotation source again (odal retry)")
    parser.add_argument("--config", required=True, help="the workspace's odal.toml")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run_daemon(args.config)
    except OdalError as error:
        logs.get("odal.daemon").error("daemon_error", error=str(error))
        print(f"odal-daemon: {error}", file=sys.stderr)
        return error.exit_code
