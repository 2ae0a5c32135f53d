"""``odal status``: what the daemon does now, annotations, queue, rounds and versions — a compact text view
(at most 100 columns), ``--json`` (ISO timestamps, rounded numbers) or ``--watch`` (:mod:`.watch`)."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path

from odal.daemon import config as config_module

LIVE_STATES = ("published", "unconfirmed", "confirmed")  # TF Serving serves the newest of these
_TIME_KEYS = {"since", "started", "started_at", "finished_at", "published_at"}


def status_data(workspace: Path | str) -> dict:
    """Everything ``odal status`` shows, read without taking the workspace lock and without writing anything
    (works for a user who may only read the workspace, and leaves an older ledger for the daemon to migrate).
    ``workspace``: the folder or its odal.toml."""
    from odal.daemon.store.history import History
    from odal.daemon.store.ledger import Ledger
    from odal.daemon.store.statusfile import read as read_now
    from odal.daemon.system.lock import read_owner

    path = Path(workspace)
    cfg = config_module.load(path if path.suffix == ".toml" else config_module.workspace_config(path))
    out: dict = {"workspace": str(cfg.path.parent), "daemon": read_owner(cfg.work_dir),
                 "now": read_now(cfg.work_dir),
                 "annotations": {"accepted": 0, "rejected": 0, "ignored": 0, "invalid": 0},
                 "queue": None, "set_aside": [], "rounds": [], "versions": [], "live_version": None}
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
             "metrics": v["metrics"] or {}, "note": v["note"], "published_at": v["published_at"]}
            for v in history.versions() if v["state"] != "deleted"
        ]
    except sqlite3.OperationalError:  # no such table yet: the daemon is starting for the first time
        pass
    finally:
        history.close()
    out["live_version"] = max((v["version"] for v in out["versions"] if v["state"] in LIVE_STATES), default=None)
    out["queue"] = _queue_status(cfg.ledger_path)
    return out


def _queue_status(ledger_path: Path) -> dict | None:
    """The active-learning queue's counts, or None before the daemon created it."""
    from odal.daemon.store.queue_query import QueueQuery

    try:
        with QueueQuery.reader(ledger_path) as queue:
            return queue.status()
    except sqlite3.OperationalError:  # no such table yet
        return None


def for_json(value, key: str = "", digits: int = 4):
    """``value`` with epoch times (``since``, ``*_at``) as ISO 8601 local times and floats rounded (timings to
    0.1 s, the rest to 4 decimals)."""
    if isinstance(value, dict):
        return {k: for_json(v, k, 1 if k == "timings" else digits) for k, v in value.items()}
    if isinstance(value, list):
        return [for_json(v, key, digits) for v in value]
    if key in _TIME_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
    if isinstance(value, float):
        return round(value, digits)
    return value


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def rounds_table(rounds: list[dict], live: int | None = None) -> str:
    """One line a round, under 100 columns: the stage timings are in ``--json``; ``*`` marks the live version."""
    header = ("round", "state", "train/eval", "steps", "mAP", "mAP@0.5", "gate: candidate/served", "version", "took")
    rows = [header]
    for r in rounds:
        m, t = r.get("metrics") or {}, r.get("timings") or {}
        version = r.get("version")
        rows.append((r["id"], r["state"], f"{_fmt(r.get('n_train'))}/{_fmt(r.get('n_eval'))}", r.get("steps"),
                     m.get("mAP"), m.get("mAP@0.5"), _gate_cell(r.get("gate")),
                     None if version is None else f"{version}{' *' if version == live else ''}",
                     duration(t.get("total"))))
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines + (["* the version TF Serving serves now"] if live is not None and any(
        r.get("version") == live for r in rounds) else []))


def _gate_cell(gate: dict | None) -> str | None:
    """``pass 0.612 >= 0.540`` / ``held 0.310 < 0.540`` / ``pass (first version)`` for the rounds table."""
    if not gate:
        return None
    verdict = "pass" if gate["passed"] else "held"
    if gate.get("served") is None:
        return f"{verdict} ({'first version' if gate.get('served_version') is None else 'not compared'})"
    return f"{verdict} {_fmt(gate['candidate'])} {'>=' if gate['passed'] else '<'} {_fmt(gate['served'])}"


def queue_line(q: dict) -> str:
    """How many images of the data dir are ranked by the newest model, and how many wait to be scored by it."""
    if not q.get("target_version"):
        return f"{q['images']} images, to be scored once a first version is published"
    current = q["images"] - q["pending"]
    never = q["images"] - q["scored"]
    why = [text for count, text in ((never, f"{never} new"), (q["pending"] - never, f"{q['pending'] - never} "
                                    "scored by an older version")) if count > 0]
    waiting = f"{q['pending']} waiting" + (f" ({', '.join(why)})" if why else "")
    return f"{q['images']} images: {current} scored by version {q['target_version']}, {waiting}"


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


def print_status(data: dict) -> None:
    owner = data["daemon"]
    print(f"workspace  {data['workspace']}")
    print(f"daemon     {'running, pid ' + str(owner['pid']) if owner else 'not running'}")
    now = data.get("now")
    if owner and now and now.get("running"):
        print(f"now        {now['text']} (since {time.strftime('%H:%M:%S', time.localtime(now['since']))})")
        if now.get("degraded"):
            since = time.strftime('%H:%M:%S', time.localtime(now['degraded']['since']))
            print(f"DEGRADED   {now['degraded']['reason']} (since {since}; retried with backoff, nothing is lost)")
    live = data.get("live_version")
    print(f"serving    {'version ' + str(live) if live is not None else 'no version published yet'}")
    a = data["annotations"]
    print(f"annotated  {a['accepted']} accepted, {a['rejected']} rejected, {a['ignored']} ignored, "
          f"{a['invalid']} set aside")
    if data.get("queue"):
        print(f"queue      {queue_line(data['queue'])}")
    if data["rounds"]:
        print("\nrounds\n" + rounds_table(data["rounds"], live))
        _print_gate(data["rounds"])
    if data["versions"]:
        print("\nversions")
        for v in data["versions"]:
            m = v["metrics"]
            mark = "*" if v["version"] == live else " "
            print(f" {mark}{v['version']:>4}  {v['state']:<12} mAP {_fmt(m.get('mAP'))}  mAP@0.5 "
                  f"{_fmt(m.get('mAP@0.5'))}  {v['path']}")
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
