"""Command line: ``odal-daemon --config FILE`` and ``odal {daemon,status,logs,rollback,retry,demo,serve,install-service,
init,pretrained}``.

Exit codes come only from here: 0 ok, 1 error, 2 configuration, 3 workspace locked.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from odal.daemon import config as config_module
from odal.daemon.system import log as logs
from odal.common.errors import OdalError


def _run_daemon(config_path: str) -> int:
    cfg = config_module.load(config_path)
    logs.configure(cfg.log_level, cfg.log_file, max_bytes=cfg.log_max_bytes, backups=cfg.log_backups)
    from odal.daemon.main import Daemon

    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    return daemon.run()


def status_data(workspace: Path) -> dict:
    """Everything ``odal status`` shows, read without taking the workspace lock and without writing anything
    (works for a user who may only read the workspace, and leaves an older ledger for the daemon to migrate)."""
    from odal.daemon.store.history import History
    from odal.daemon.store.ledger import Ledger
    from odal.daemon.system.lock import read_owner
    from odal.daemon.store.statusfile import read as read_now

    cfg = config_module.load(config_module.workspace_config(workspace))
    out: dict = {"workspace": str(Path(workspace).resolve()), "daemon": read_owner(cfg.work_dir),
                 "now": read_now(cfg.work_dir),
                 "annotations": {"accepted": 0, "rejected": 0, "ignored": 0, "invalid": 0},
                 "queue": None, "set_aside": [], "rounds": [], "versions": []}
    if not cfg.ledger_path.exists():
        return out
    with Ledger(cfg.ledger_path, readonly=True) as ledger:
        if ledger.schema is None:  # the daemon is creating it right now
            return out
        out["annotations"] = ledger.counts()
        out["set_aside"] = ledger.invalid_items(20)
    history = History(cfg.ledger_path, readonly=True)
    try:
        out["rounds"] = [dict(r, gate=r.get("gate")) for r in history.rounds(20)]  # gate: None before it ran
        out["versions"] = [
            {"version": v["version"], "path": v["path"], "state": v["state"], "round": v["round_id"],
             "metrics": v["metrics"] or {}, "note": v["note"]}
            for v in history.versions() if v["state"] != "deleted"
        ]
    except sqlite3.OperationalError:  # no such table yet: the daemon is starting for the first time
        pass
    finally:
        history.close()
    out["queue"] = _queue_status(cfg.ledger_path)
    return out


def _queue_status(ledger_path: Path) -> dict | None:
    """The active-learning queue's counts, or None before the daemon created it."""
    from odal.daemon.store.queue import ActiveQueue

    try:
        with ActiveQueue.reader(ledger_path) as queue:
            return queue.status()
    except sqlite3.OperationalError:  # no such table yet
        return None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def rounds_table(rounds: list[dict]) -> str:
    header = ("round", "state", "accepted", "train", "eval", "steps", "mAP", "mAP@0.5", "gate: candidate/served",
              "version", "records s", "train s", "eval s", "served eval s", "export s", "publish s", "confirm s",
              "total s")
    rows = [header]
    for r in rounds:
        m, t = r.get("metrics") or {}, r.get("timings") or {}
        rows.append((r["id"], r["state"], r.get("accepted"), r.get("n_train"), r.get("n_eval"), r.get("steps"),
                     m.get("mAP"), m.get("mAP@0.5"), _gate_cell(r.get("gate")), r.get("version"), *(t.get(k) for k in (
                         "records", "train", "evaluate", "evaluate_served", "export", "publish", "confirm", "total"))))
    cells = [[_fmt(c, 1) if isinstance(c, float) and i >= 10 else _fmt(c) for i, c in enumerate(row)] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def _gate_cell(gate: dict | None) -> str | None:
    """``pass 0.612 >= 0.540`` / ``held 0.310 < 0.540`` / ``pass (first version)`` for the rounds table."""
    if not gate:
        return None
    verdict = "pass" if gate["passed"] else "held"
    if gate.get("served") is None:
        return f"{verdict} ({'first version' if gate.get('served_version') is None else 'not compared'})"
    return f"{verdict} {_fmt(gate['candidate'])} {'>=' if gate['passed'] else '<'} {_fmt(gate['served'])}"


def _print_gate(rounds: list[dict]) -> None:
    """The newest gate decision, what it was measured on, and the eval-set warning."""
    newest = next((r for r in reversed(rounds) if r.get("gate")), None)
    if newest is None:
        return
    gate = newest["gate"]
    outcome = "published" if gate["passed"] else "held back"
    print(f"gate       {gate['metric']} (tolerance {gate['tolerance']:g}): round {newest['id']} {outcome}: "
          f"{gate.get('reason')}")
    source = gate.get("eval_set") or {}
    where = (f"the {source.get('fraction')} eval split of the annotations (changes as they grow)"
             if source.get("source") == "split" else f"{source.get('source')}, {source.get('set_aside', 0)} line(s) "
             "set aside")
    print(f"eval set   {gate.get('eval_images')} images: {where}")
    for note in [*source.get("notes", []), gate.get("warning")]:
        if note:
            print(f"warning    {note}")


def _print_status(data: dict) -> None:
    owner = data["daemon"]
    print(f"workspace  {data['workspace']}")
    print(f"daemon     {'running, pid ' + str(owner['pid']) if owner else 'not running'}")
    now = data.get("now")
    if owner and now and now.get("running"):
        print(f"now        {now['text']} (since {time.strftime('%H:%M:%S', time.localtime(now['since']))})")
        if now.get("degraded"):
            since = time.strftime('%H:%M:%S', time.localtime(now['degraded']['since']))
            print(f"DEGRADED   {now['degraded']['reason']} (since {since}; retried with backoff, nothing is lost)")
    a = data["annotations"]
    print(f"annotations  accepted {a['accepted']}  rejected {a['rejected']}  ignored {a['ignored']}  "
          f"set aside {a['invalid']}")
    q = data.get("queue")
    if q:
        print(f"queue        {q['images']} images, {q['scored']} scored (newest by version {q['scored_version']}), "
              f"{q['pending']} to score")
    if data["rounds"]:
        print("\nrounds\n" + rounds_table(data["rounds"]))
        _print_gate(data["rounds"])
    if data["versions"]:
        print("\nversions")
        for v in data["versions"]:
            m = v["metrics"]
            print(f"  {v['version']:>4}  {v['state']:<12} mAP {_fmt(m.get('mAP'))}  mAP@0.5 {_fmt(m.get('mAP@0.5'))}"
                  f"  {v['path']}")
    if data["set_aside"]:
        print("\nset aside (newest first; fix the source and run `odal retry`; a line waiting for its image is "
              "tried again when the image appears)")
        from odal.daemon.sources.images import COMPLETE_BUT

        for item in data["set_aside"]:
            waits = ""
            if item.get("image"):
                complete = str(item.get("error", "")).startswith(COMPLETE_BUT)
                waits = "  [replace the image to try again]" if complete else "  [waiting for the image]"
            print(f"  {item.get('source')}:{item.get('line')}  {item.get('error')}{waits}")


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
    from odal.daemon.commands import train_worker

    train_worker.add_parsers(sub)
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
            data = status_data(Path(args.workspace))
            if args.json:
                print(json.dumps(data, indent=2, default=str))
            else:
                _print_status(data)
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
        if args.command == "train-worker":
            return train_worker.run(args)
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
