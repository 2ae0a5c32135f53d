"""Prometheus metrics of the daemon, served on loopback in the text exposition format 0.0.4 (stdlib only).

The daemon owns one :class:`Metrics`, tells it what happened (:meth:`Metrics.ingested`, :meth:`Metrics.round_started`,
:meth:`Metrics.round_finished`, :meth:`Metrics.error`) and, when ``[metrics] address`` is set, calls
:func:`serve`.  Scraping only reads: each request renders the current values under the registry's lock.

    odal_rounds_total{state}                      counter   rounds finished, by end state
    odal_round_in_progress                        gauge     1 while a round runs
    odal_stage_duration_seconds{stage}            histogram records/train/evaluate/export/publish/confirm/total
    odal_stage_last_duration_seconds{stage}       gauge     the newest round's duration of each stage
    odal_annotations_ingested_total{answer}       counter   answers written to the ledger (new or changed), by answer
                                                            (a line read again, e.g. a fresh db-out, adds nothing)
    odal_set_aside_total                          counter   lines added to the set-aside list since the daemon started
    odal_set_aside_items                          gauge     lines in the ledger's set-aside table
    odal_versions_published_total                 counter
    odal_model_version                            gauge     newest published version
    odal_last_map                                 gauge     COCO mAP of the newest evaluated round
    odal_gate_candidate / odal_gate_served        gauge     the gate metric of the newest gated round's candidate
                                                            and of the version serving then (NaN: not compared)
    odal_gate_passed                              gauge     1 if that round was published, 0 if held back
    odal_errors_total{kind}                       counter   event (ingest), round, publish ...
"""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from odal.common.address import parse_address
from odal.daemon.system import log as logs

log = logs.get("odal.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# name -> (type, help)
_META = {
    "odal_rounds_total": ("counter", "Rounds finished, by end state."),
    "odal_round_in_progress": ("gauge", "1 while a training round runs."),
    "odal_stage_duration_seconds": ("histogram", "Duration of round stages."),
    "odal_stage_last_duration_seconds": ("gauge", "Duration of each stage in the newest round that ran it."),
    "odal_annotations_ingested_total": ("counter", "Answers written to the ledger (new or changed), by answer."),
    "odal_set_aside_total": ("counter", "Lines added to the set-aside list since the daemon started."),
    "odal_set_aside_items": ("gauge", "Records in the ledger's set-aside table."),
    "odal_versions_published_total": ("counter", "Model versions published since the daemon started."),
    "odal_model_version": ("gauge", "Newest published model version."),
    "odal_last_map": ("gauge", "COCO mAP of the newest evaluated round."),
    "odal_errors_total": ("counter", "Errors, by kind."),
    "odal_gate_candidate": ("gauge", "Gate metric of the newest round's candidate model."),
    "odal_gate_served": ("gauge", "Gate metric of the version serving during the newest round (NaN: not compared)."),
    "odal_gate_passed": ("gauge", "1 if the newest gated round was published, 0 if it was held back."),
    "odal_start_time_seconds": ("gauge", "When the daemon started (Unix time)."),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """A small registry: counters, gauges and histograms keyed by (name, labels); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], list] = {}  # [bucket counts..., sum, count]
        self.set("odal_start_time_seconds", time.time())
        self.set("odal_round_in_progress", 0)
        for state in ("published", "held_back", "failed", "abandoned", "skipped"):
            self.inc("odal_rounds_total", 0, state=state)
        for answer in ("accept", "reject", "ignore"):
            self.inc("odal_annotations_ingested_total", 0, answer=answer)
        self.inc("odal_set_aside_total", 0)
        self.inc("odal_versions_published_total", 0)

    # -- primitives ----------------------------------------------------------------------------------------------------
    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, _labels(labels))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, _labels(labels))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = (name, _labels(labels))
        with self._lock:
            hist = self._histograms.setdefault(key, [0] * (len(BUCKETS) + 2))
            for index, bound in enumerate(BUCKETS):
                if value <= bound:
                    hist[index] += 1
            hist[-2] += value
            hist[-1] += 1

    def value(self, name: str, **labels: str) -> float | None:
        with self._lock:
            return self._values.get((name, _labels(labels)))

    # -- what the daemon reports ---------------------------------------------------------------------------------------
    def ingested(self, stats: dict, set_aside_items: int | None = None) -> None:
        for answer in ("accept", "reject", "ignore"):  # rows the ledger inserted or changed, not lines read
            if stats.get("new_" + answer):
                self.inc("odal_annotations_ingested_total", stats["new_" + answer], answer=answer)
        added = stats.get("invalid", 0) - stats.get("cleared", 0)
        if added > 0:  # a source read again sets its still-bad lines aside again: only the growth counts
            self.inc("odal_set_aside_total", added)
        if set_aside_items is not None:
            self.set("odal_set_aside_items", set_aside_items)

    def round_started(self) -> None:
        self.set("odal_round_in_progress", 1)

    def round_finished(self, state: str, timings: dict | None = None, metrics: dict | None = None,
                       version: int | None = None, gate: dict | None = None) -> None:
        self.set("odal_round_in_progress", 0)
        self.inc("odal_rounds_total", state=state)
        for stage, seconds in (timings or {}).items():
            if isinstance(seconds, (int, float)):
                self.observe("odal_stage_duration_seconds", seconds, stage=stage)
                self.set("odal_stage_last_duration_seconds", seconds, stage=stage)
        if metrics and isinstance(metrics.get("mAP"), (int, float)):
            self.set("odal_last_map", metrics["mAP"])
        if gate:
            for name in ("candidate", "served"):
                value = gate.get(name)
                self.set(f"odal_gate_{name}", value if isinstance(value, (int, float)) else math.nan)
            self.set("odal_gate_passed", int(bool(gate["passed"])))
        if version is not None:
            self.inc("odal_versions_published_total")
            self.set("odal_model_version", version)
        if state == "failed":
            self.error("round")

    def error(self, kind: str) -> None:
        self.inc("odal_errors_total", kind=kind)

    # -- exposition ----------------------------------------------------------------------------------------------------
    def render(self) -> str:
        """The text exposition format 0.0.4: HELP and TYPE once per family, then its samples."""
        with self._lock:
            values = dict(self._values)
            histograms = {k: list(v) for k, v in self._histograms.items()}
        lines = []
        names = sorted({n for n, _ in values} | {n for n, _ in histograms})
        for name in names:
            kind, text = _META.get(name, ("untyped", name))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for (n, labels), value in sorted(values.items()):
                if n == name:
                    lines.append(f"{name}{_render_labels(labels)} {_number(value)}")
            for (n, labels), hist in sorted(histograms.items()):
                if n != name:
                    continue
                for bound, count in zip(BUCKETS, hist):
                    lines.append(f"{name}_bucket{_render_labels(labels + (('le', _number(bound)),))} {count}")
                lines.append(f"{name}_bucket{_render_labels(labels + (('le', '+Inf'),))} {hist[-1]}")
                lines.append(f"{name}_sum{_render_labels(labels)} {_number(hist[-2])}")
                lines.append(f"{name}_count{_render_labels(labels)} {hist[-1]}")
        return "\n".join(lines) + "\n"


def _labels(labels: dict) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


class MetricsServer:
    """The HTTP server thread; ``close()`` stops and joins it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self._httpd, self._thread = httpd, thread
        self.host, self.port = httpd.server_address[:2]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(host: str, port: int, metrics: Metrics) -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics`` from a daemon thread (port 0: any free port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not log events
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="odal-metrics",
                              daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)


def serve_address(address: str, metrics: Metrics) -> MetricsServer | None:
    """The endpoint at ``[metrics] address`` (HOST:PORT; loopback is the intended use), or None when it is empty."""
    parsed = parse_address(address)
    if parsed is None:
        return None
    server = serve(*parsed, metrics)
    log.info("metrics_serving", address=f"{server.host}:{server.port}")
    return server
