"""``odal status``: what the daemon does now, annotations, set-aside lines, rounds and versions, read without the
workspace lock and without writing anything."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from odal.daemon import config as config_module


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
    from odal.daemon.store.queue_query import QueueQuery

    try:
        with QueueQuery.reader(ledger_path) as queue:
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
