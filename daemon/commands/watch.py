"""``odal status --watch``: a live view of a workspace (stage, step/total, loss, ETA, the last rounds), redrawn
with rich on a terminal; when the output is not a terminal, one plain line each time what the daemon does changes.

It reads what ``odal status`` reads (the status file, the ledger), never takes the lock and writes nothing.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from odal.daemon.commands.status import duration, queue_line, status_data

LAST_ROUNDS = 5


def activity(data: dict) -> tuple[str, dict | None]:
    """What the daemon does now (``not running`` when it is not) and the round's progress record, if any."""
    now = data.get("now") or {}
    if not data.get("daemon") or not now.get("running"):
        return "not running", None
    text = now.get("text", "")
    if now.get("degraded"):
        text = f"DEGRADED: {now['degraded']['reason']} ({text})"
    return text, now.get("detail")


def plain_line(data: dict) -> str:
    """``14:02:11  round 3: training 120/200  loss 0.412  1.9 steps/s  ETA 42s`` for a log or a pipe."""
    text, detail = activity(data)
    parts = [datetime.now().strftime("%H:%M:%S"), text]
    if detail and detail.get("stage") == "train" and detail.get("step") is not None:
        parts += [f"loss {detail['loss']:.4f}" if detail.get("loss") is not None else "",
                  f"{detail['steps_per_second']:.1f} steps/s" if detail.get("steps_per_second") else "",
                  f"ETA {duration(detail.get('eta_seconds'))}"]
    return "  ".join(p for p in parts if p)


def render(data: dict):
    """The live view of ``status_data``'s ``data`` as a rich renderable."""
    text, detail = activity(data)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("workspace", data["workspace"])
    head.add_row("daemon", Text(text, style="red" if text.startswith(("DEGRADED", "not running")) else "green"))
    if detail and detail.get("stage") == "train" and detail.get("of"):
        bar = Table.grid(padding=(0, 2))
        bar.add_row(ProgressBar(total=detail["of"], completed=detail["step"], width=30),
                    f"step {detail['step']}/{detail['of']}",
                    f"loss {detail['loss']:.4f}" if detail.get("loss") is not None else "loss -",
                    f"{detail['steps_per_second']:.1f} steps/s" if detail.get("steps_per_second") else "",
                    f"ETA {duration(detail.get('eta_seconds'))}")
        head.add_row(f"round {detail.get('round', '')}", bar)
    elif detail and detail.get("stage"):
        head.add_row(f"round {detail.get('round', '')}", f"stage {detail['stage']}")
    live = data.get("live_version")
    head.add_row("serving", f"version {live}" if live is not None else "no version published yet")
    a = data["annotations"]
    head.add_row("annotated", f"{a['accepted']} accepted, {a['rejected']} rejected, {a['ignored']} ignored, "
                              f"{a['invalid']} set aside")
    if data.get("queue"):
        head.add_row("queue", queue_line(data["queue"]))
    rounds = Table(title=f"last {LAST_ROUNDS} rounds", title_justify="left", show_edge=False, pad_edge=False)
    for name in ("round", "state", "train/eval", "mAP@0.5", "gate", "version", "took"):
        rounds.add_column(name, justify="left" if name in ("state", "gate") else "right")
    for r in data["rounds"][-LAST_ROUNDS:]:
        metrics, gate = r.get("metrics") or {}, r.get("gate") or {}
        score = metrics.get("mAP@0.5")
        version = r.get("version")
        rounds.add_row(str(r["id"]), Text(r["state"], style=_STATE_STYLE.get(r["state"], "")),
                       f"{r.get('n_train') or '-'}/{r.get('n_eval') or '-'}",
                       f"{score:.3f}" if isinstance(score, float) else "-",
                       ("pass" if gate.get("passed") else "held") if gate else "-",
                       "-" if version is None else f"{version}{' *' if version == live else ''}",
                       duration((r.get("timings") or {}).get("total")))
    return Group(head, Text(""), rounds)


_STATE_STYLE = {"published": "green", "held_back": "yellow", "failed": "red", "running": "cyan"}


def watch(config_path: Path, interval: float = 1.0, console: Console | None = None,
          updates: int | None = None) -> int:
    """Redraw every ``interval`` seconds until Ctrl-C (or ``updates`` times, for tests)."""
    console = console or Console()
    count = 0
    try:
        if not console.is_terminal:
            last = None
            while updates is None or count < updates:
                line = plain_line(status_data(config_path))
                if line.split("  ", 1)[1:] != (last or "").split("  ", 1)[1:]:
                    console.file.write(line + "\n")
                    console.file.flush()  # a pipe (tee, a log) sees each change at once
                    last = line
                count += 1
                time.sleep(interval)
            return 0
        with Live(render(status_data(config_path)), console=console, auto_refresh=False) as live:
            while updates is None or count < updates:
                time.sleep(interval)
                live.update(render(status_data(config_path)), refresh=True)
                count += 1
    except KeyboardInterrupt:
        pass
    return 0
