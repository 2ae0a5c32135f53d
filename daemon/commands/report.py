"""``odal report --workspace DIR [--out DIR]``: one static HTML page about a workspace, opened from disk (no server,
no script): mAP and annotations per round (plots), the publish gate's decisions, stage timings, the versions, and a
few eval images with the annotators' boxes beside the served model's.

Everything is read without the workspace lock and without writing into the workspace (the default ``--out`` is
``<work_dir>/report``): the ledger read-only, the round folders, the label map.  The page and its PNG/JPEG files
are written atomically into the output folder (``index.html`` last, so an open page never points at a missing file).
"""

from __future__ import annotations

import html
import sqlite3
import time
from pathlib import Path

from odal.daemon.commands import report_images, report_plots
from odal.daemon.config import Config

ROUNDS = 200  # the newest rounds shown


def gather(cfg: Config) -> dict:
    """Rounds (oldest first), versions and annotation counts, read-only; empty before the daemon wrote them."""
    from odal.daemon.store.history import History
    from odal.daemon.store.ledger import Ledger

    data = {"rounds": [], "versions": [], "annotations": None}
    if not cfg.ledger_path.exists():
        return data
    with Ledger(cfg.ledger_path, readonly=True) as ledger:
        if ledger.schema is not None:
            data["annotations"] = ledger.counts()
    history = History(cfg.ledger_path, readonly=True)
    try:
        data["rounds"] = history.rounds(ROUNDS)
        data["versions"] = [v for v in history.versions() if v["state"] != "deleted"]
    except sqlite3.OperationalError:  # no such table yet
        pass
    finally:
        history.close()
    return data


def write(cfg: Config, out: Path) -> Path:
    """Write the report into ``out``; returns its ``index.html``."""
    from odal.daemon.rounds.inputs import image_roots
    from odal.daemon.sources.label_map import load_label_map
    from odal.daemon.system.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    data = gather(cfg)
    rounds = data["rounds"]
    plots = {name: function(rounds, out / f"{name}.png").name for name, function in (
        ("map", report_plots.map_per_round), ("annotations", report_plots.annotations_per_round),
        ("timings", report_plots.timings_per_round))}
    labels = load_label_map(cfg.label_map)
    shown = report_images.examples(cfg, labels, out / "images", image_roots(cfg))
    page = out / "index.html"
    atomic_write_text(page, render(cfg, data, plots, shown))
    return page


def _e(value) -> str:
    return html.escape("-" if value is None else str(value))


def _n(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _e(value)


def _table(header: tuple, rows: list[tuple]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gate_rows(rounds: list[dict]) -> list[tuple]:
    rows = []
    for r in rounds:
        gate = r.get("gate")
        if not gate:
            continue
        verdict = "published" if gate.get("passed") else "held back"
        rows.append((_e(r["id"]), f'<span class="{"pass" if gate.get("passed") else "held"}">{verdict}</span>',
                     _e(gate.get("metric")), _n(gate.get("candidate")), _n(gate.get("served")),
                     _e(gate.get("served_version")), _n(gate.get("tolerance"), 2), _e(gate.get("reason"))))
    return rows


def _timing_rows(rounds: list[dict]) -> list[tuple]:
    rows = []
    for r in rounds:
        t = r.get("timings") or {}
        rows.append((_e(r["id"]), _e(r["state"]), *(_n(t.get(key), 1) for key, _ in report_plots.STAGES),
                     _n(t.get("total"), 1), _e((r.get("error") or "")[:300] or None)))
    return rows


def render(cfg: Config, data: dict, plots: dict, shown: dict) -> str:
    """The page (HTML5, inline CSS, no script)."""
    rounds, versions = data["rounds"], data["versions"]
    counts = data["annotations"] or {}
    live = max((v["version"] for v in versions if v["state"] in ("published", "confirmed")), default=None)
    version_rows = [(_e(v["version"]), _e(v["state"]), _e(v["round_id"]), _n((v["metrics"] or {}).get("mAP")),
                     _n((v["metrics"] or {}).get("mAP@0.5")), _e(v["path"]), _e(v["note"])) for v in versions]
    examples = []
    for item in shown["items"]:
        if item.get("error"):
            examples.append(f'<figure class="pair"><figcaption>{_e(item["name"])}: {_e(item["error"])}'
                            "</figcaption></figure>")
            continue
        model = (f'<img src="{_e(item["model"])}" alt="model boxes on {_e(item["name"])}">'
                 if item["model"] else '<div class="none">no detections (see above)</div>')
        examples.append(
            f'<figure class="pair"><img src="{_e(item["truth"])}" alt="annotators\' boxes on {_e(item["name"])}">'
            f"{model}<figcaption>{_e(item['name'])}: {item['boxes']} annotated box(es)"
            + (f", {item['detections']} detection(s) with score &ge; {report_images.MIN_SCORE}"
               if item["detections"] is not None else "") + "</figcaption></figure>")
    stage_names = tuple(name for _, name in report_plots.STAGES)
    key = (f" Eval images of round {_e(shown['round'])}: <span class=\"key-truth\">the annotators' boxes</span> left, "
           "<span class=\"key-model\">the served model's</span> right.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>odal report: {_e(cfg.model_name)}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; }}
th {{ background: #f4f4f4; }} td {{ text-align: right; }} td:last-child {{ text-align: left; }}
.plots img {{ max-width: 49%; }} .pair {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
.pair img {{ max-width: 320px; margin-right: 4px; }} .none {{ display: inline-block; width: 200px; color: #777; }}
.pass {{ color: #1f7a3f; }} .held {{ color: #b7791f; }} .note {{ color: #555; }}
.key-truth {{ color: {report_images.TRUTH}; }} .key-model {{ color: {report_images.MODEL}; }}
</style></head><body>
<h1>odal report: model <code>{_e(cfg.model_name)}</code></h1>
<p class="note">workspace {_e(cfg.path.parent)} &middot; written {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}
&middot; {len(rounds)} round(s) &middot; accepted annotations {_e(counts.get('accepted'))}, rejected
{_e(counts.get('rejected'))}, ignored {_e(counts.get('ignored'))}, set aside {_e(counts.get('invalid'))}
&middot; newest published version: {_e(live)}</p>
<h2>Progress</h2>
<div class="plots"><img src="{plots['map']}" alt="mAP per round"><img src="{plots['annotations']}"
alt="annotations per round"></div>
<h2>The model on eval images</h2>
<p class="note">{_e(shown['note'])}.{key if shown['items'] else ''}</p>
{''.join(examples) or '<p>no image to show</p>'}
<h2>Publish gate</h2>
{_table(("round", "decision", "metric", "candidate", "served", "served version", "tolerance", "why"),
        _gate_rows(rounds)) if _gate_rows(rounds) else '<p>no gate decision yet</p>'}
<h2>Stage timings (seconds)</h2>
<div class="plots"><img src="{plots['timings']}" alt="stage timings per round"></div>
{_table(("round", "state", *stage_names, "total", "error"), _timing_rows(rounds)) if rounds else '<p>no round yet</p>'}
<h2>Versions</h2>
{_table(("version", "state", "round", "mAP", "mAP@0.5", "path", "note"), version_rows)
 if version_rows else '<p>no version published yet</p>'}
</body></html>
"""


def run(cfg: Config, out: str | None) -> str:
    """``odal report``: write it, say where."""
    page = write(cfg, Path(out).expanduser().resolve() if out else cfg.work_dir / "report")
    return f"wrote {page} (open file://{page} in a browser)"
