"""What ``odal simulate`` shows from ``results.json``: ``summary.md`` (also printed) and ``curves.png``.

Per strategy, over the repeats (mean ± sample standard deviation, "spread"):

- mAP@0.5 (and mAP) at each round's label count;
- **AUC**: the area under mAP@0.5 against labels, divided by the labels' range: the mean mAP@0.5 over the curve;
- **labels to 90%**: the labels at which the curve first reaches 90% of the full-data reference's mAP@0.5 (the
  reference's last round; linear between rounds);
- **gain over the baseline** (the first strategy, normally random): the mean over the selection rounds of
  (strategy - baseline) mAP@0.5 in points, per repeat, then mean ± spread; and the worst round of the mean curves;
- per-class AP@0.5 at the last round (``simulate_classes``; several classes only).

Only finished rounds count; a repeat with fewer rounds than the others is used for the rounds it has.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from odal.daemon.system.atomic import atomic_write_bytes, atomic_write_text


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, spread


def _pm(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    mean, spread = _stats([None if v is None else v * scale for v in values])
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _curves(data: dict) -> dict[str, dict[int, list[dict]]]:
    """strategy -> repeat -> its finished rounds."""
    out: dict[str, dict[int, list[dict]]] = {name: {} for name in data["settings"]["strategies"]}
    for run in data["runs"].values():
        if run["rounds"]:
            out.setdefault(run["strategy"], {})[run["repeat"]] = run["rounds"]
    return out


def auc(rounds: list[dict]) -> float | None:
    points = [(r["labels"], r["mAP@0.5"]) for r in rounds if r["mAP@0.5"] is not None]
    if len(points) < 2:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])


def labels_to_reach(rounds: list[dict], target: float) -> float | None:
    points = [(r["labels"], r["mAP@0.5"]) for r in rounds if r["mAP@0.5"] is not None]
    for (x0, y0), (x1, y1) in zip([(None, None)] + points, points):
        if y1 >= target:
            return float(x1) if x0 is None or y1 == y0 else x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def full_reference(data: dict) -> float | None:
    full = data.get("full") or {}
    values = [r["mAP@0.5"] for r in full.get("rounds", []) if r["mAP@0.5"] is not None]
    return values[-1] if values else None


def summary(data: dict) -> str:
    settings, curves = data["settings"], _curves(data)
    names = settings["strategies"]
    base = names[0]
    full = full_reference(data)
    lines = [f"# odal simulate: {Path(settings['source']).name}", "",
             f"{settings['images']} images ({settings['test_size']} held out per repeat), labels "
             f"{', '.join(settings['labels'])}; model {settings['model']}, {settings['steps']} steps a round; "
             f"{settings['seed_labels']} seed labels, then {settings['rounds']} rounds of {settings['batch']}; "
             f"{settings['repeats']} repeats (mean ± spread = sample standard deviation over repeats).", ""]
    rounds = settings["rounds"] + 1
    lines += ["## mAP@0.5 on the held-out test set", "",
              "| round | labels | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for number in range(rounds):
        labels = sorted({runs[number]["labels"] for runs in _all(curves) if len(runs) > number})
        if not labels:
            continue
        cells = [_pm([runs[number]["mAP@0.5"] for runs in curves[n].values() if len(runs) > number]) for n in names]
        lines.append(f"| {number} | {'/'.join(map(str, labels))} | " + " | ".join(cells) + " |")
    if full is not None:
        lines += ["", f"Full-data reference (all {data['full'].get('labels') or '?'} pool images, same rounds and "
                  f"steps, repeat 0's test set): mAP@0.5 {full:.3f}; 90% of it: {0.9 * full:.3f}."]
    lines += ["", "## Summary", "",
              f"| strategy | AUC (mean mAP@0.5 over the curve) | labels to 90% of full-data | mean gain over {base} "
              f"(points) | worst round vs {base} (points) | final mAP |", "|---|---|---|---|---|---|"]
    for name in names:
        runs = curves.get(name, {})
        reach = [labels_to_reach(r, 0.9 * full) for r in runs.values()] if full is not None else []
        reached = [x for x in reach if x is not None]
        reach_text = ("-" if full is None else (_pm(reached, digits=0) if reached else "not reached")
                      + (f" ({len(reached)}/{len(reach)} repeats)" if len(reached) != len(reach) else ""))
        gains, worst = _gains(curves, name, base)
        lines.append(f"| {name} | {_pm([auc(r) for r in runs.values()])} | {reach_text} | "
                     f"{'-' if name == base else _pm(gains, 100, 1)} | "
                     f"{'-' if name == base or worst is None else f'{worst:+.1f}'} | "
                     f"{_pm([r[-1]['mAP'] for r in runs.values()])} |")
    lines += _per_class(curves, names, settings["labels"])
    return "\n".join(lines) + "\n"


def _all(curves: dict) -> list[list[dict]]:
    return [runs for strategy in curves.values() for runs in strategy.values()]


def _gains(curves: dict, name: str, base: str) -> tuple[list[float], float | None]:
    """Per repeat, the mean over selection rounds of (name - base) mAP@0.5; and the worst round of the means."""
    gains, by_round = [], {}
    for repeat, rounds in curves.get(name, {}).items():
        other = curves.get(base, {}).get(repeat, [])
        diffs = [(a["round"], a["mAP@0.5"] - b["mAP@0.5"]) for a, b in zip(rounds[1:], other[1:])
                 if a["mAP@0.5"] is not None and b["mAP@0.5"] is not None]
        if diffs:
            gains.append(sum(d for _, d in diffs) / len(diffs))
        for number, diff in diffs:
            by_round.setdefault(number, []).append(diff)
    worst = min((sum(v) / len(v) * 100 for v in by_round.values()), default=None)
    return gains, worst


def _per_class(curves: dict, names: list[str], labels: list[str]) -> list[str]:
    rows = []
    for name in names:
        finals = [runs[-1]["per_class"] for runs in curves.get(name, {}).values() if runs[-1].get("per_class")]
        if finals:
            rows.append(f"| {name} | " + " | ".join(_pm([(f.get(label) or {}).get("AP@0.5") for f in finals])
                                                    for label in labels) + " |")
    if not rows:
        return []
    return ["", "## Per-class AP@0.5 at the last round (served version on the test set, pycocotools)", "",
            "| strategy | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels), *rows]


def plot(data: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(data)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, runs in curves.items():
        rounds = max((len(r) for r in runs.values()), default=0)
        xs, means, spreads = [], [], []
        for number in range(rounds):
            values = [r[number]["mAP@0.5"] for r in runs.values() if len(r) > number and r[number]["mAP@0.5"]
                      is not None]
            if values:
                mean, spread = _stats(values)
                xs.append(sum(r[number]["labels"] for r in runs.values() if len(r) > number)
                          / sum(len(r) > number for r in runs.values()))
                means.append(mean)
                spreads.append(spread)
        if xs:
            line, = axes.plot(xs, means, marker="o", label=f"{name} ({len(runs)} repeats)")
            axes.fill_between(xs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                              color=line.get_color(), alpha=0.2)
    full = full_reference(data)
    if full is not None:
        axes.axhline(full, color="grey", linestyle="--", linewidth=1, label=f"all pool labels ({full:.3f})")
        axes.axhline(0.9 * full, color="grey", linestyle=":", linewidth=1, label="90% of it")
    axes.set_xlabel("labelled images")
    axes.set_ylabel("mAP@0.5 on the held-out test set")
    axes.set_title(f"odal simulate: {Path(data['settings']['source']).name} (mean ± 1 sd over repeats)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write(out: Path, data: dict) -> str:
    """``summary.md`` and ``curves.png`` in ``out`` (atomically); the summary's text."""
    text = summary(data)
    atomic_write_text(Path(out) / "summary.md", text)
    if any(run["rounds"] for run in data["runs"].values()):
        atomic_write_bytes(Path(out) / "curves.png", plot(data))
    return text
