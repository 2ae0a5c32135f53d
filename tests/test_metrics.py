"""The metrics registry renders Prometheus text format 0.0.4 and is served on loopback over real HTTP."""

from __future__ import annotations

import signal
import urllib.request

import pytest

from odal.common.address import parse_address
from odal.daemon.system.metrics import CONTENT_TYPE, Metrics, serve


def test_a_published_round_counts_stages_version_and_map():
    metrics = Metrics()
    metrics.round_started()
    assert metrics.value("odal_round_in_progress") == 1
    metrics.round_finished("published", {"train": 4.0, "export": 40.0}, {"mAP": 0.25}, version=7)
    text = metrics.render()
    assert 'odal_rounds_total{state="published"} 1' in text
    assert "odal_round_in_progress 0" in text and "odal_model_version 7" in text and "odal_last_map 0.25" in text
    assert 'odal_stage_duration_seconds_bucket{stage="train",le="5"} 1' in text
    assert 'odal_stage_duration_seconds_bucket{stage="export",le="30"} 0' in text
    assert 'odal_stage_duration_seconds_bucket{stage="export",le="+Inf"} 1' in text
    assert 'odal_stage_duration_seconds_count{stage="export"} 1' in text
    assert 'odal_stage_last_duration_seconds{stage="export"} 40.0' in text


def test_ingest_and_errors_are_counted_by_answer_and_kind():
    metrics = Metrics()
    metrics.ingested({"accept": 3, "reject": 1, "new_accept": 3, "new_reject": 1, "set_aside": 2, "invalid": 2},
                     set_aside_items=5)
    metrics.ingested({"accept": 3, "set_aside": 2, "invalid": 2, "cleared": 2, "unchanged": 3},  # read again
                     set_aside_items=5)
    metrics.ingested({"accept": 1, "new_accept": 1, "updated": 1})  # a corrected answer
    metrics.round_finished("failed")
    text = metrics.render()
    assert 'odal_annotations_ingested_total{answer="accept"} 4' in text
    assert 'odal_annotations_ingested_total{answer="ignore"} 0' in text
    assert "odal_set_aside_total 2" in text and "odal_set_aside_items 5" in text
    assert 'odal_errors_total{kind="round"} 1' in text


def test_every_family_has_help_and_type_once():
    text = Metrics().render()
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families)) and "odal_rounds_total" in families


def test_the_endpoint_serves_the_registry_over_http_and_404s_elsewhere():
    metrics = Metrics()
    with serve("127.0.0.1", 0, metrics) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE
            assert b"odal_round_in_progress 0" in response.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)


def test_addresses_parse_and_empty_means_off():
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("") is None
    with pytest.raises(ValueError):
        parse_address("localhost")


def test_the_real_daemon_serves_its_ingest_counts_on_the_configured_address(tmp_path):
    from daemon_harness import DaemonProcess, append_records, make_workspace
    from odal.daemon.sources import datasets
    from odal.serving.process import free_port

    items = datasets.generate_shapes(tmp_path / "images", 2)
    config = make_workspace(tmp_path / "ws", items, min_new=1000)
    port = free_port()
    config.write_text(config.read_text() + f'\n[metrics]\naddress = "127.0.0.1:{port}"\n')
    append_records(config.parent / "exports" / "annotations.jsonl",
                   [datasets.prodigy_record(i, i.image.name) for i in items] + ["{broken"])
    daemon = DaemonProcess(config).start()
    try:
        assert daemon.wait_event("metrics_serving", 60) and daemon.wait_event("ingested", 60)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'odal_annotations_ingested_total{answer="accept"} 2' in text
        assert "odal_set_aside_total 1" in text and "odal_set_aside_items 1" in text
        daemon.proc.send_signal(signal.SIGUSR1)  # `odal retry`: every source read again, nothing new in it
        assert daemon.wait_event("sources_reread", 30)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'odal_annotations_ingested_total{answer="accept"} 2' in text  # a line read again is not counted
        assert "odal_set_aside_total 1" in text and "odal_set_aside_items 1" in text
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
