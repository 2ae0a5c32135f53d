"""Cold start: the daemon's worker builds and traces the model while the daemon waits for annotations, so round 1
reuses that session and writes only the weights (as a warm round does); the prewarm's whole SavedModel becomes the
model's template (``<base_path>/.odal-template``), which ``odal serve`` loads ahead, so version 1 reads only its
variables, and which is never a version.  The same after the worker is retired for memory: the next child is
prewarmed before the next annotations arrive, and the next round is a warm one.

One real daemon, worker and ``odal serve`` run the whole story once (module fixture); each test checks one part."""

from __future__ import annotations

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import json
import re
import time

import pytest
from conftest import TINY_CONFIG
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
            first = daemon.wait_event("worker_prewarmed", 600) or {}
            _wait_for_line(served_log, f"{base / TEMPLATE_DIR}: template loaded", 120)  # found, not served
            found["before_first_batch"] = list(daemon.events)
            append_records(export, records_for(items[:4]))
            daemon.wait_event("round_published", 600)
            # The retired child's successor is prewarmed in the background while the daemon waits for annotations.
            daemon.wait_for(lambda e: e.get("event") == "worker_prewarmed" and e.get("pid") != first.get("pid"), 600)
            append_records(export, records_for(items[4:]))
            daemon.wait_for(lambda e: e.get("event") == "round_published" and e.get("version") == 2, 600)
            daemon.wait_event("worker_retired", 60)  # after round 2 too (the next prewarm is not waited for)
            found["events"] = list(daemon.events)
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


def test_the_prewarms_train_call_leaves_every_weight_and_moving_statistic_as_it_found_them(tmp_path):
    """The prewarm runs the traced train step once (TensorFlow optimises a function at its first call) and undoes
    it: round 1 must start from the weights it would have had without a prewarm, at global step 0."""
    import numpy as np

    from odal.daemon.worker import prewarm
    from odal.daemon.worker import session as sessions

    prewarm._sample_round(tmp_path)  # noqa: SLF001  (the prewarm's own round: one generated image, class 1)
    datasets.write_label_map(tmp_path / "label_map.pbtxt", ["sample"])
    configs = sessions.load_configs(TINY_CONFIG, tmp_path / "label_map.pbtxt", 1, tmp_path / "train.record",
                                    tmp_path / "eval.record")
    sessions.adjustments(configs)
    session = sessions.ModelSession(configs)
    session.trace_train(configs)  # as the prewarm: creates the model's and the optimiser's variables
    variables = [*session.model.variables, *session.optimizer.variables(), session.global_step]
    moving = [v for v in session.model.variables if "moving_" in v.name]
    assert session.model.trainable_variables and moving  # BatchNorm trains in this config (its statistics move)

    def values() -> list:
        return [v.numpy().copy() for v in variables]

    before = values()
    prewarm._first_train_call_undone(session, configs, tmp_path / "before")  # noqa: SLF001
    after = values()
    changed = [v.name for v, a, b in zip(variables, before, after) if not np.array_equal(a, b)]
    assert not changed, f"the prewarm's train call left {len(changed)} variables moved: {changed[:8]}"
    assert int(session.global_step.numpy()) == 0
    # The same call without the undo moves the weights and the statistics: the comparison above can fail.
    session._train_step(iter(session._dataset(configs, "train")), *prewarm.throughput.call_args(1, 1, 1.0))  # noqa: SLF001
    moved = {v.name for v, a, b in zip(variables, before, values()) if not np.array_equal(a, b)}
    assert {v.name for v in session.model.trainable_variables} & moved and {v.name for v in moving} & moved
    assert int(session.global_step.numpy()) == 1
