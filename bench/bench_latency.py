"""Round latency (issue 14, goals 1, 2, 4): overhead of a round beyond its train steps, cold start, warm-up.

One run measures the old and the new path side by side, interleaved round by round on the same machine load:

* **old**: a plain worker (started when round 1 arrives), the OD API's ``eager_eval_loop`` (``ODAL_EVAL_LOOP=eager``:
  traced again at every call), ``odal serve`` finding versions by its 1 s poll and loading them cold
  (``--file_system_watch=false --enable_model_warmup=false``);
* **prewarm**: a worker prewarmed before round 1's annotations (``odal.daemon.worker.prewarm``), the eval step traced
  once per session, ``odal serve`` woken by inotify and replaying each export's warm-up request before the
  version serves; its first version is loaded whole (the new path before the graph template);
* **new**: the same, and the prewarm publishes its SavedModel as the model's template (``.odal-template``), which
  ``odal serve`` loads before version 1 arrives (serving/template.py), so version 1 reads only its variables.
  The run waits for the server to have loaded it, as the daemon waits for annotations (the time is reported);
* **retired** (``--paths new,retired``): the new path with a worker retired for memory after every round
  (``max_rss`` 1 byte, as ``[training] worker_max_mb`` does), its successor prewarmed in the background by the
  worker client; the run waits for that prewarm before the next round (the daemon waits for annotations; the
  time is reported), so rounds 2+ are each the first round of a fresh worker, compared with new's warm rounds.

Each round is what the daemon runs: records, train, evaluation of the candidate and of the served version (the
publish gate), export, publish (rename into the base path), confirmation (the version AVAILABLE, then a Predict
pinned to it, as ``rounds/confirm.py`` does).  Overhead = round total - train seconds.  "first predict" is the
confirmation's Predict, the first request the new version answers; "steady predict" the median of 5 after it.

    nice -n 10 .venv/bin/python bench/bench_latency.py [--rounds 3] [--steps 100] [--images 32] [--config tiny]
        [--paths old,prewarm,new]

Writes bench/results/latency.md (``--paths new,retired``: latency_retired.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worker_jobs import CONFIG, REPO, Worker, round_job, shapes, write_result, write_round

from odal.daemon.rounds.contracts import GateSpec, PrewarmJob, Served
from odal.serving.discovery import TEMPLATE_DIR
from odal.daemon.system.atomic import publish_dir
from odal.serving.client import ServingClient
from odal.serving.process import ServerProcess

CONFIGS = {"tiny": CONFIG, "ssdlite": REPO / "daemon" / "assets" / "ssdlite_mobilenet_v2.config"}
OLD_SERVER = ("--file_system_watch=false", "--enable_model_warmup=false", "--reuse_loaded_graph=false")
PATHS = {"old": ({"ODAL_EVAL_LOOP": "eager"}, OLD_SERVER), "prewarm": ({}, ()), "new": ({}, ()), "retired": ({}, ())}


class Path_:
    """One side of the comparison: a worker, a server, a base path."""

    def __init__(self, name: str, root: Path, env: dict, server_flags: tuple[str, ...]) -> None:
        self.name, self.root, self.env = name, root / name, env
        self.base = self.root / "models" / "m"
        self.base.mkdir(parents=True)
        self.server = ServerProcess(self.root / "serve.log", "--model_name=m", f"--model_base_path={self.base}",
                                    "--rest_api_port=0", *server_flags, rest_port=0)
        self.client = ServingClient(self.server.address, timeout=60)
        self.worker: Worker | None = None
        self.rows: list[dict] = []
        self.template_loads = 0  # how many times its server began loading a template (counted by close())

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.client.close()
        self.server.stop()
        log = self.root / "serve.log"
        self.template_loads = log.read_text(errors="replace").count("loading the template") if log.exists() else 0


def _round(side: Path_, config: Path, root: Path, round_dir: Path, number: int, steps: int, label_map: Path,
           labels: list[str], image) -> dict:
    started = time.monotonic()
    if side.worker is None:  # started by its first job, with the side's environment
        side.worker = Worker(side.root / "worker.log")
    job = dataclasses.replace(
        round_job(side.root, round_dir, number, steps, label_map, labels), pipeline_config=config,
        gate=GateSpec("mAP@0.5", 1.0), served=Served(number - 1, side.base / str(number - 1)) if number > 1 else None)
    saved = dict(os.environ)
    os.environ.update(side.env)
    try:
        result = side.worker.run(job)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    t = dict(result.timings)
    mark = time.monotonic()
    publish_dir(job.export_dir, side.base / str(number))
    t["publish"] = time.monotonic() - mark
    mark = time.monotonic()
    side.client.wait_until_available("m", number, timeout=600, poll=0.05)
    t["available"] = time.monotonic() - mark
    asked = time.monotonic()
    side.client.predict("m", image, version=number)
    t["first_predict"] = time.monotonic() - asked
    t["confirm"] = time.monotonic() - mark
    t["total"] = time.monotonic() - started
    steady = []
    for _ in range(5):
        asked = time.monotonic()
        side.client.predict("m", image, version=number)
        steady.append(time.monotonic() - asked)
    t["steady_predict"] = statistics.median(steady)
    t["overhead"] = t["total"] - t["train"]
    t["reused"], t["export_how"] = result.session_reused, result.export
    t["load_how"] = _load_how(side.root / "serve.log", side.base / str(number))
    return t


def _load_how(server_log: Path, version_dir: Path) -> str:
    """How the server loaded a version, from its log: "vars" (its variables into a loaded graph) or "full", then
    "+w" when it replayed the export's warm-up requests before the version became AVAILABLE."""
    lines = [line for line in server_log.read_text(errors="replace").splitlines() if f"{version_dir}: " in line]
    how = "vars" if any("same graph as a loaded version" in line for line in lines) else "full"
    return how + ("+w" if any("warm-up request" in line for line in lines) else "")


def _wait_for_template(side: Path_, timeout: float = 900) -> float:
    """Seconds until ``side``'s server logs its template loaded (or failed)."""
    started, done = time.monotonic(), f"{side.base / TEMPLATE_DIR}: template "
    while time.monotonic() - started < timeout:
        lines = (side.root / "serve.log").read_text(errors="replace")
        if done + "loaded in" in lines or done + "not loaded" in lines:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def _summary(sides: dict, warm: range, prewarm_seconds: dict, template_seconds: dict, waits: dict) -> list[str]:
    """The ratios under the round table, for the paths run (``warm``: the indexes of rounds 2+)."""
    def mean(side: Path_, key: str = "total") -> float:
        return statistics.mean(side.rows[i][key] for i in warm)

    old, new, retired = sides.get("old"), sides.get("new"), sides.get("retired")
    lines = []
    if old and new:
        lines.append(f"- Warm-round overhead (rounds 2-{len(warm) + 1}, mean): old {mean(old, 'overhead'):.2f} s, "
                     f"new {mean(new, 'overhead'):.2f} s ({mean(old, 'overhead') / mean(new, 'overhead'):.1f}x less).")
    colds = [f"{side.name} {side.rows[0]['total'] / mean(side):.2f}x" for side in sides.values()
             if side.name != "retired"]
    before = "; ".join(f"{name}'s prewarm {seconds:.1f} s" for name, seconds in prewarm_seconds.items())
    loaded = "; ".join(f"{name}'s server loaded its template in {seconds:.1f} s"
                       for name, seconds in template_seconds.items())
    lines.append(f"- Cold start, round 1 / mean warm round: {', '.join(colds)} (done before round 1's annotations: "
                 f"{before}; then {loaded}).")
    if retired and new:
        after = [retired.rows[i]["total"] for i in warm]
        lines.append(f"- Round after a retirement (retired, rounds 2+: a fresh worker each, prewarmed before the "
                     f"round) / mean warm round (new): {statistics.mean(after) / mean(new):.2f}x ("
                     + ", ".join(f"{t:.1f} s" for t in after) + f" vs {mean(new):.1f} s; the successor's prewarm "
                     f"went on after the retirement for " + ", ".join(f"{w:.1f} s" for w in waits["retired"])
                     + " more before the round; exports: " + ", ".join(retired.rows[i]["export_how"] for i in warm)
                     + "; loads: " + ", ".join(retired.rows[i]["load_how"] for i in warm) + "; template loads by its "
                     f"server: {retired.template_loads}).")
    if old and new:
        lines.append("- First predict after a reload / steady predict (rounds 2+): old " + ", ".join(
            f"{old.rows[i]['first_predict'] / old.rows[i]['steady_predict']:.1f}x" for i in warm) + "; new "
            + ", ".join(f"{new.rows[i]['first_predict'] / new.rows[i]['steady_predict']:.1f}x" for i in warm) + ".")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--paths", default="old,prewarm,new", help="a comma list of: " + ", ".join(PATHS))
    args = parser.parse_args()
    config = CONFIGS[args.config]
    names = args.paths.split(",")
    if not set(names) <= set(PATHS) or len(set(names)) != len(names):
        parser.error(f"--paths: a comma list of distinct names among {', '.join(PATHS)}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items, labels, label_map = shapes(root, args.images)
        image = items[0].image
        per_round = len(items) // args.rounds
        round_dirs = []
        for number in range(1, args.rounds + 1):
            round_dirs.append(root / "rounds" / str(number))
            write_round(round_dirs[-1], items[: per_round * number], labels, 0.2)
        sides = tuple(Path_(name, root, *PATHS[name]) for name in names)
        by_name = {side.name: side for side in sides}
        prewarm_seconds, template_seconds, waits = {}, {}, {}
        try:
            # The workers start and prewarm while "the daemon waits for annotations" (not timed in round 1).
            for side in sides:
                if side.name == "old":
                    continue
                template = side.base / TEMPLATE_DIR if side.name in ("new", "retired") else None
                side.worker = Worker(side.root / "worker.log", max_rss=1 if side.name == "retired" else 0,
                                     prewarm_job=PrewarmJob(config, label_map, len(labels), template_dir=template))
                mark = time.monotonic()
                side.worker.prewarm(wait=True)
                prewarm_seconds[side.name] = time.monotonic() - mark
            for side in sides:
                if side.name in ("new", "retired"):
                    template_seconds[side.name] = _wait_for_template(side)
            for number, round_dir in enumerate(round_dirs, 1):
                for side in sides:
                    if side.name == "retired" and number > 1:  # the retired worker's successor's prewarm
                        mark = time.monotonic()
                        side.worker.wait_prewarmed()
                        waits.setdefault(side.name, []).append(time.monotonic() - mark)
                    side_dir = root / side.name / "rounds" / str(number)
                    shutil.copytree(round_dir, side_dir)
                    side.rows.append(_round(side, config, root, side_dir, number, args.steps, label_map, labels,
                                            image))
        finally:
            for side in sides:
                side.close()
    lines = [f"# Round latency: {', '.join(names)} paths, interleaved in one run ({args.config} config, {args.rounds} "
             f"rounds x {args.steps} steps, {args.images} generated images, 2 shared cores)", "",
             "| round | path | records | train | eval | eval served | export | publish | load | available | first predict "
             "| steady predict | confirm | total | overhead |", "|---|---|" + "---:|" * 6 + "---|" + "---:|" * 6]
    for number in range(args.rounds):
        for side in sides:
            r = side.rows[number]
            lines.append(f"| {number + 1} | {side.name} | {r['records']:.2f} | {r['train']:.1f} | "
                         f"{r.get('evaluate', 0):.2f} | {r.get('evaluate_served', 0):.2f} | {r['export']:.2f} | "
                         f"{r['publish']:.2f} | {r['load_how']} | {r['available']:.2f} | "
                         f"{r['first_predict'] * 1000:.0f} ms | {r['steady_predict'] * 1000:.0f} ms | "
                         f"{r['confirm']:.2f} | {r['total']:.1f} | {r['overhead']:.2f} |")
    lines += [""] + _summary(by_name, range(1, args.rounds), prewarm_seconds, template_seconds, waits) + [
        f"- Load average (1 min) at the start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores.  load: how the server loaded the version (full: tf.saved_model.load; vars: "
        f"its variables into the already loaded graph; +w: warm-up requests replayed before AVAILABLE)."]
    name = "latency_retired.md" if "retired" in names else "latency.md"
    write_result(f"latency_{args.config}.md" if args.config != "tiny" else name, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
