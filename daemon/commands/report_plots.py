"""The report's plots (matplotlib, Agg, PNG files): mAP per round, annotations per round, stage timings per round.

Each function takes the rounds as ``History.rounds`` returns them and writes one PNG (atomically) at ``path``.
"""

from __future__ import annotations

import io
from pathlib import Path

from odal.daemon.system.atomic import atomic_write_bytes

STAGES = (("records", "records"), ("train", "train"), ("evaluate", "eval"), ("evaluate_served", "served eval"),
          ("export", "export"), ("publish", "publish"), ("confirm", "confirm"))
_SIZE = (6.4, 3.2)  # inches at 100 dpi: 640 x 320 pixels


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=_SIZE, dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def map_per_round(rounds: list[dict], path: Path) -> Path:
    """mAP and mAP@0.5 of each evaluated round; held-back rounds hollow, with the served version's number."""
    figure, axes = _figure()
    evaluated = [r for r in rounds if (r.get("metrics") or {}).get("mAP") is not None]
    ids = [r["id"] for r in evaluated]
    for key, style in (("mAP@0.5", "o-"), ("mAP", "s-")):
        axes.plot(ids, [r["metrics"].get(key) for r in evaluated], style, label=key)
    held = [r for r in evaluated if r["state"] == "held_back" and (r.get("gate") or {}).get("served") is not None]
    if held:
        axes.plot([r["id"] for r in held], [r["gate"]["served"] for r in held], "x", color="black", markersize=9,
                  label="served version (round held back)")
    axes.set_xlabel("round")
    axes.set_ylabel("on the round's eval images")
    axes.set_ylim(0, 1)
    if ids:
        axes.set_xticks(ids)
    else:
        axes.text(0.5, 0.5, "no round evaluated yet", ha="center", va="center", transform=axes.transAxes)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def annotations_per_round(rounds: list[dict], path: Path) -> Path:
    """Accepted annotations each round trained on: new since the previous round, and the ones before."""
    figure, axes = _figure()
    counted = [r for r in rounds if r.get("accepted") is not None]
    ids = [r["id"] for r in counted]
    totals = [r["accepted"] for r in counted]
    before = [0] + totals[:-1]
    new = [max(total - previous, 0) for total, previous in zip(totals, before)]
    axes.bar(ids, [min(b, t) for b, t in zip(before, totals)], color="#9bb7d4", label="from earlier rounds")
    axes.bar(ids, new, bottom=[min(b, t) for b, t in zip(before, totals)], color="#2b6cb0", label="new this round")
    axes.set_xlabel("round")
    axes.set_ylabel("accepted annotations")
    if ids:
        axes.set_xticks(ids)
    else:
        axes.text(0.5, 0.5, "no round yet", ha="center", va="center", transform=axes.transAxes)
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def timings_per_round(rounds: list[dict], path: Path) -> Path:
    """Seconds of each stage of each round, stacked."""
    figure, axes = _figure()
    timed = [r for r in rounds if r.get("timings")]
    ids = [r["id"] for r in timed]
    bottom = [0.0] * len(timed)
    for key, name in STAGES:
        values = [float((r["timings"] or {}).get(key) or 0.0) for r in timed]
        if any(values):
            axes.bar(ids, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
    axes.set_xlabel("round")
    axes.set_ylabel("seconds")
    if ids:
        axes.set_xticks(ids)
        axes.legend(loc="upper right", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no round timed yet", ha="center", va="center", transform=axes.transAxes)
    return _save(figure, path)
