"""Cold start: the daemon's worker builds and traces the model while the daemon waits for annotations, so round 1
reuses that session and writes only the weights (as a warm round does)."""

from __future__ import annotations

import pytest
from daemon_harness import DaemonProcess, append_records, make_workspace, records_for

from odal.daemon.sources import datasets

pytestmark = pytest.mark.slow


def test_the_worker_is_prewarmed_before_the_first_annotation_and_round_one_reuses_it(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 6, seed=11)
    config = make_workspace(tmp_path / "ws", items, steps=5, min_new=4, debounce=0.5, eval_fraction=0.3,
                            prewarm=True)
    export = config.parent / "exports" / "annotations.jsonl"
    with DaemonProcess(config) as daemon:
        prewarmed = daemon.wait_event("worker_prewarmed", 600)
        assert prewarmed is not None and prewarmed["built"], daemon.events[-5:]
        assert not [e for e in daemon.events if e.get("event") in ("round_started", "record_ingested")]
        append_records(export, records_for(items))
        trained = daemon.wait_event("round_trained", 600)
        assert trained is not None, daemon.events[-5:]
        # Round 1 ran in the prewarmed session: nothing built or traced again, no whole SavedModel written.
        assert trained["session_reused"] is True and trained["export"] == "weights"
        assert daemon.wait_event("round_published", 120) is not None
