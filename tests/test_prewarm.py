"""Cold start: the daemon's worker builds and traces the model while the daemon waits for annotations, so round 1
reuses that session and writes only the weights (as a warm round does); the prewarm's whole SavedModel becomes the
model's template (``<base_path>/.odal-template``), which ``odal serve`` loads ahead, so version 1 reads only its
variables, and which is never a version."""

from __future__ import annotations

import json
import time

import pytest
from daemon_harness import DaemonProcess, append_records, make_workspace, odal_cli, records_for

from odal.daemon.sources import datasets
from odal.serving.discovery import TEMPLATE_DIR
from odal.serving.process import ServerProcess

pytestmark = pytest.mark.slow


def _wait_for_line(log, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in {log}:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.1)


def test_the_worker_is_prewarmed_before_the_first_annotation_and_round_one_reuses_it(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 6, seed=11)
    base = tmp_path / "ws" / "models" / "odal"
    base.mkdir(parents=True)
    served_log = tmp_path / "serve.log"
    with ServerProcess(served_log, "--model_name=odal", f"--model_base_path={base}", rest_port=0) as server:
        config = make_workspace(tmp_path / "ws", items, steps=5, min_new=4, debounce=0.5, eval_fraction=0.3,
                                prewarm=True, serving_address=server.address, base_path=base)
        export = config.parent / "exports" / "annotations.jsonl"
        with DaemonProcess(config) as daemon:
            prewarmed = daemon.wait_event("worker_prewarmed", 600)
            assert prewarmed is not None and prewarmed["built"], daemon.events[-5:]
            assert prewarmed["template"] == "published"
            assert not [e for e in daemon.events if e.get("event") in ("round_started", "record_ingested")]
            _wait_for_line(served_log, f"{base / TEMPLATE_DIR}: loading the template", 60)  # found, not served
            append_records(export, records_for(items))
            trained = daemon.wait_event("round_trained", 600)
            assert trained is not None, daemon.events[-5:]
            # Round 1 ran in the prewarmed session: nothing built or traced again, no whole SavedModel written.
            assert trained["session_reused"] is True and trained["export"] == "weights"
            assert trained["global_step"] == 5  # the prewarm's train call (paying the first run) was undone
            assert daemon.wait_event("round_published", 300) is not None, daemon.events[-5:]
        status = json.loads(odal_cli("status", "--config", str(config), "--json").stdout)
    # Version 1 is the template's graph: the server read only its variables; only version 1 is a version.
    assert (base / "1" / "saved_model.pb").read_bytes() == (base / TEMPLATE_DIR / "saved_model.pb").read_bytes()
    assert f"{base / '1'}: same graph as a loaded version; restored its variables only" in served_log.read_text()
    assert [v["version"] for v in status["versions"]] == [1]
