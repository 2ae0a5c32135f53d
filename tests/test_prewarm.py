"""Cold start: the daemon's worker builds and traces the model while the daemon waits for annotations, so round 1
reuses that session and writes only the weights (as a warm round does); the prewarm's whole SavedModel becomes the
model's template (``<base_path>/.odal-template``), which ``odal serve`` loads ahead, so version 1 reads only its
variables, and which is never a version.  The same after the worker is retired for memory: the next child is
prewarmed before the next annotations arrive, and the next round is a warm one.

One real daemon, worker and ``odal serve`` run the whole story once (module fixture); each test checks one part."""

from __future__ import annotations

import json
import re
import time

import pytest
from daemon_harness import DaemonProcess, append_records, make_workspace, odal_cli, records_for

from odal.daemon.sources import datasets
from odal.serving.discovery import TEMPLATE_DIR
from odal.serving.process import ServerProcess

pytestmark = pytest.mark.slow


def _wait_for_line(log, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def two_rounds_with_a_retirement(tmp_path_factory) -> dict:
    """A daemon with ``prewarm = true`` and ``worker_max_mb = 1`` (every TensorFlow child is above it, so the worker
    is retired after each round), serving through a real ``odal serve``: started, prewarmed, then two batches of
    annotations, the second sent once the retired worker's successor has been prewarmed (as the daemon waits for
    annotations).  Waits are bounded; what happened is returned for the tests to check:
    {"events", "served_log", "base", "status", "before_first_batch": events logged before it}."""
    tmp_path = tmp_path_factory.mktemp("prewarm")
    items = datasets.generate_shapes(tmp_path / "images", 8, seed=11)
    base = tmp_path / "ws" / "models" / "odal"
    base.mkdir(parents=True)
    served_log = tmp_path / "serve.log"
    found: dict = {"base": base, "served_log": served_log}
    with ServerProcess(served_log, "--model_name=odal", f"--model_base_path={base}", rest_port=0) as server:
        config = make_workspace(tmp_path / "ws", items, steps=5, min_new=4, debounce=0.5, eval_fraction=0.3,
                                prewarm=True, serving_address=server.address, base_path=base)
        config.write_text(re.sub(r"(debounce_seconds = .*)", r"\1\nworker_max_mb = 1", config.read_text()))
        export = config.parent / "exports" / "annotations.jsonl"
        with DaemonProcess(config) as daemon:
            ended = ("worker_prewarmed", "worker_prewarm_failed")
            first = daemon.wait_for(lambda e: e.get("event") in ended, 600) or {}
            _wait_for_line(served_log, f"{base / TEMPLATE_DIR}: template loaded", 120)  # found, not served
            found["before_first_batch"] = list(daemon.events)
            append_records(export, records_for(items[:4]))
            daemon.wait_event("round_published", 600)
            # The retired child's successor starts and is prewarmed in the background while the daemon waits for
            # annotations (without the prewarm after a retirement, no child starts until the next round).
            def successor(*names: str):
                return lambda e: e.get("event") in names and e.get("pid") not in (None, first.get("pid"))

            if daemon.wait_for(successor("worker_started"), 180) is not None:
                daemon.wait_for(successor(*ended), 600)
            append_records(export, records_for(items[4:]))
            daemon.wait_for(lambda e: e.get("event") == "round_published" and e.get("version") == 2, 600)
            found["events"] = list(daemon.events)
            daemon.kill()  # not waiting for the next successor (retired after round 2 too) to start, to be stopped
        found["status"] = json.loads(odal_cli("status", "--config", str(config), "--json").stdout)
    return found


def _events(run: dict, name: str) -> list[dict]:
    return [e for e in run["events"] if e.get("event") == name]


def test_the_worker_is_prewarmed_before_the_first_annotation_and_round_one_reuses_it(two_rounds_with_a_retirement):
    run = two_rounds_with_a_retirement
    before = run["before_first_batch"]
    prewarmed = [e for e in before if e.get("event") == "worker_prewarmed"]
    assert prewarmed and prewarmed[0]["built"] and prewarmed[0]["template"] == "published", before[-5:]
    assert not [e for e in before if e.get("event") in ("round_started", "record_ingested")]
    trained = _events(run, "round_trained")
    assert trained, run["events"][-5:]
    # Round 1 ran in the prewarmed session: nothing built or traced again, no whole SavedModel written.
    assert trained[0]["session_reused"] is True and trained[0]["export"] == "weights"
    assert trained[0]["global_step"] == 5  # the prewarm's train call (paying the first run) was undone
    base = run["base"]
    # Version 1 is the template's graph: the server read only its variables; only versions are versions.
    assert (base / "1" / "saved_model.pb").read_bytes() == (base / TEMPLATE_DIR / "saved_model.pb").read_bytes()
    served = run["served_log"].read_text(errors="replace")
    assert f"{base / '1'}: same graph as a loaded version; restored its variables only" in served
    assert sorted(v["version"] for v in run["status"]["versions"]) == [1, 2]


def test_after_a_retirement_the_next_worker_is_prewarmed_before_the_next_round_which_reuses_it(
        two_rounds_with_a_retirement):
    run = two_rounds_with_a_retirement
    events = run["events"]
    names = [e.get("event") for e in events]
    retired = _events(run, "worker_retired")
    assert retired and retired[0]["max_mb"] == 1, events[-8:]
    prewarmed = _events(run, "worker_prewarmed")
    assert len(prewarmed) >= 2, f"the retired worker's successor was not prewarmed: {events[-8:]}"
    successor = prewarmed[1]
    assert successor["pid"] != retired[0]["pid"] and successor["built"]
    started = [i for i, e in enumerate(events) if e.get("event") == "round_started"]
    assert len(started) == 2 and names.index("worker_retired") < events.index(successor) < started[1]
    # Round 2 ran in the successor's prewarmed session: no build, no trace, weights-only export, and it went on
    # from round 1's checkpoint (the successor's own undone train call left no step behind).
    trained = _events(run, "round_trained")[1]
    assert trained["session_reused"] is True and trained["export"] == "weights"
    assert trained["global_step"] == 10
    # The successor built the same graph: the template was left in place, the server did not load it again, and
    # version 2 was loaded by reading its variables only.
    assert successor["template"] == "unchanged"
    base, served = run["base"], run["served_log"].read_text(errors="replace")
    assert served.count(f"{base / TEMPLATE_DIR}: loading the template") == 1
    assert f"{base / '2'}: same graph as a loaded version; restored its variables only" in served



@pytest.mark.parametrize("which", ["first", "successor"])
def test_the_prewarms_train_call_is_undone_every_weight_and_moving_statistic_as_it_was(
        two_rounds_with_a_retirement, which):
    """The prewarm runs the traced train step once (TensorFlow optimises a function at its first call) and puts
    every variable back: round 1 (or the round after a retirement) starts from the weights it would have had
    without a prewarm, at its global step.  The worker compares every variable before the call, after it and after
    the undo; here, what it found in the real worker child, for both prewarms."""
    index = 0 if which == "first" else 1
    prewarmed = _events(two_rounds_with_a_retirement, "worker_prewarmed")
    failed = _events(two_rounds_with_a_retirement, "worker_prewarm_failed")
    assert len(prewarmed) > index, failed or two_rounds_with_a_retirement["events"][-8:]
    undo = prewarmed[index]["undo"]
    # The call moved weights and BatchNorm moving statistics (so the comparison can fail) ...
    assert undo["moved_trainable"] > 0 and undo["moved_moving"] > 0 and undo["moved"] <= undo["variables"]
    # ... and after the undo, no variable differs from its value before the call; the global step is back at 0.
    assert undo["left"] == 0 and undo["global_step"] == 0
