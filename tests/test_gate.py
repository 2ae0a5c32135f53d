"""The publish gate's decisions, its configuration, the fixed eval set it reads, and how held-back rounds are recorded
(no TensorFlow here: the rounds themselves are in test_gate_rounds.py)."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon_harness import make_workspace
from odal.daemon.sources import datasets
from odal.daemon.sources import evalset
from odal.daemon.rounds import gate
from odal.daemon.config import load
from odal.common.errors import ConfigError
from odal.daemon.rounds.inputs import assign_splits
from odal.daemon.store.history import History
from odal.daemon.system.metrics import Metrics
from test_ingest_db import ProdigyDB

KEY = gate.METRICS["mAP@0.5"]
LABELS = list(datasets.SHAPE_LABELS)


def _raw(value):
    return {KEY: value, gate.METRICS["mAP"]: value / 2}


# -- decisions -------------------------------------------------------------------------------------------------------
def test_the_first_version_passes_whatever_it_measures():
    decision = gate.decide("mAP@0.5", 0.0, _raw(0.0), None, None)
    assert decision["passed"] and decision["served"] is None and "first version" in decision["reason"]


@pytest.mark.parametrize("candidate, served, tolerance, passed", [
    (0.50, 0.50, 0.0, True),     # not worse
    (0.49, 0.50, 0.0, False),    # worse, no tolerance
    (0.45, 0.50, 0.05, True),    # worse by exactly the tolerance
    (0.44, 0.50, 0.05, False),   # worse by more
    (0.60, 0.50, -0.2, False),   # a negative tolerance asks for an improvement
    (0.00, 1.00, 1.0, True),     # tolerance 1: everything passes
])
def test_a_candidate_worse_than_served_by_more_than_the_tolerance_is_held_back(candidate, served, tolerance, passed):
    decision = gate.decide("mAP@0.5", tolerance, _raw(candidate), _raw(served), 3)
    assert decision["passed"] is passed
    assert (decision["candidate"], decision["served"], decision["served_version"]) == (candidate, served, 3)
    assert ("<" in decision["reason"]) is not passed


def test_the_chosen_metric_decides():
    decision = gate.decide("mAP", 0.0, _raw(0.4), _raw(0.5), 1)  # mAP 0.2 vs 0.25
    assert (decision["metric"], decision["candidate"], decision["served"]) == ("mAP", 0.2, 0.25)


def test_without_a_comparison_the_round_publishes_and_says_why():
    unmeasured = gate.decide("mAP@0.5", 0.0, _raw(0.1), None, 4, "ServedMismatch: 3 of 300 weights are not in x")
    assert unmeasured["passed"] and unmeasured["served"] is None
    assert "served version 4 could not be evaluated (ServedMismatch" in unmeasured["reason"]
    no_eval = gate.decide("mAP@0.5", 0.0, None, None, 4)
    assert no_eval["passed"] and "no eval images" in no_eval["reason"]
    nan = gate.decide("mAP@0.5", 0.0, {KEY: math.nan}, _raw(0.5), 4)
    assert nan["candidate"] is None and nan["passed"]


def test_a_small_eval_set_is_named_with_its_box_counts_and_error():
    few = [{"boxes": [{"label": "square"}] * 12}]
    warning = gate.eval_set_warning(few, LABELS)
    assert "square 12 boxes (AP +-0.14)" in warning and "disc no box (AP not measured)" in warning
    assert "fewer than 50 boxes per class" in warning
    enough = [{"boxes": [{"label": "square"}, {"label": "disc"}]}] * 50
    assert gate.eval_set_warning(enough, LABELS) is None


# -- configuration ---------------------------------------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path):
    items = datasets.generate_shapes(tmp_path / "images", 6, seed=2)
    config = make_workspace(tmp_path / "ws", items, gate=None)
    return {"config": config, "items": items, "base": config.read_text()}


def _with(workspace, section: str):
    workspace["config"].write_text(workspace["base"] + section)
    return load(workspace["config"])


def test_gate_defaults_are_map_at_half_iou_and_no_tolerance(workspace):
    cfg = load(workspace["config"])
    assert (cfg.gate_metric, cfg.gate_tolerance, cfg.eval_export, cfg.eval_dataset) == ("mAP@0.5", 0.0, None, "")


@pytest.mark.parametrize("section, message", [
    ('[gate]\nmetric = "loss"\n', "gate.metric: mAP, mAP@0.5, mAP@0.75, AR@100"),
    ("[gate]\ntolerance = 1.5\n", "gate.tolerance: must be in [-1, 1]"),
    ('[gate]\neval_export = "nowhere.jsonl"\n', "gate.eval_export: no such file"),
    ('[gate]\neval_export = "exports/eval.jsonl"\n', "is in prodigy.export_dir, whose files are trained on"),
    ('[gate]\neval_dataset = "heldout"\n', "gate.eval_dataset: needs prodigy.database"),
])
def test_a_bad_gate_setting_is_one_message_naming_the_key(workspace, section, message):
    (workspace["config"].parent / "exports" / "eval.jsonl").write_text("")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        _with(workspace, section)


def test_the_eval_dataset_cannot_be_the_training_dataset(workspace, tmp_path):
    db = tmp_path / "prodigy.db"
    ProdigyDB(db)
    text = workspace["base"].replace('export_dir = "exports"', f'database = "{db}"\ndataset = "boxes"')
    workspace["config"].write_text(text + '[gate]\neval_dataset = "boxes"\n')
    with pytest.raises(ConfigError, match="gate.eval_dataset: 'boxes' is the training dataset"):
        load(workspace["config"])


# -- the fixed eval set ----------------------------------------------------------------------------------------------
def _lines(items, *extra):
    return [json.dumps(datasets.prodigy_record(item, item.image.name)) for item in items] + list(extra)


def test_bad_eval_lines_are_logged_with_file_and_line_and_the_rest_is_used(workspace, tmp_path):
    items = workspace["items"]
    path = tmp_path / "eval.jsonl"
    unknown = dict(datasets.prodigy_record(items[3], items[3].image.name))
    unknown["spans"][0]["label"] = "triangle"
    rejected_later = datasets.prodigy_record(items[2], items[2].image.name, "reject", timestamp=2**40)
    path.write_text("\n".join(_lines(items[:3], "{not json", json.dumps(unknown), json.dumps(rejected_later))) + "\n")
    with capture_logs() as logs:
        found = evalset.read(str(path), evalset._file_lines(path), LABELS, items[0].image.parent, tmp_path / "blobs")
    assert found.lines == 6 and found.set_aside == 2
    assert sorted(a["image_path"] for a in found.annotations) == sorted(str(i.image) for i in items[:2])
    bad = [(e["file"], e["line"]) for e in logs if e["event"] == "eval_record_set_aside"]
    assert bad == [(str(path), 4), (str(path), 5)]


def test_the_eval_set_is_read_again_only_when_it_changes(workspace, tmp_path):
    items = workspace["items"]
    path = tmp_path / "heldout.jsonl"
    path.write_text("\n".join(_lines(items[:2], "{bad")) + "\n")
    workspace["config"].write_text(workspace["base"] + f'[gate]\neval_export = "{path}"\n')
    cfg = load(workspace["config"])
    with capture_logs() as logs:
        first = evalset.load(cfg, LABELS, tmp_path / "blobs")
        assert evalset.load(cfg, LABELS, tmp_path / "blobs") is first
        path.write_text("\n".join(_lines(items[:4])) + "\n")
        assert len(evalset.load(cfg, LABELS, tmp_path / "blobs").annotations) == 4
    assert [e["event"] for e in logs if e["event"].startswith("eval_")] == [
        "eval_record_set_aside", "eval_set_read", "eval_set_read"]


def test_the_eval_set_can_be_a_prodigy_database_dataset(workspace, tmp_path):
    items = workspace["items"]
    db = ProdigyDB(tmp_path / "prodigy.db")
    db.add("boxes", *(datasets.prodigy_record(i, i.image.name) for i in items[:4]))
    db.add("heldout", *(datasets.prodigy_record(i, i.image.name) for i in items[4:]))
    text = workspace["base"].replace('export_dir = "exports"', f'database = "{db.path}"\ndataset = "boxes"')
    workspace["config"].write_text(text + '[gate]\neval_dataset = "heldout"\n')
    found = evalset.load(load(workspace["config"]), LABELS, tmp_path / "blobs")
    assert found.source.endswith("#heldout")
    assert sorted(a["image_path"] for a in found.annotations) == sorted(str(i.image) for i in items[4:])


def test_an_image_in_both_the_ledger_and_the_eval_set_is_only_evaluated():
    eval_set = [{"input_hash": "1", "image_path": "/d/a.jpg", "boxes": []}]
    ledger = [{"input_hash": "1", "image_path": "/d/a.jpg", "boxes": []},   # same answer, in the training export
              {"input_hash": "9", "image_path": "/d/a.jpg", "boxes": []},   # same file under another hash
              {"input_hash": "2", "image_path": "/d/b.jpg", "boxes": []}]
    pairs = assign_splits(ledger, 0.5, eval_set)
    assert [(a["input_hash"], split) for a, split in pairs] == [("2", "train"), ("1", "eval")]


_GOOD = {"image": "a.jpg", "width": 192, "height": 160, "answer": "accept", "_input_hash": 5, "_timestamp": 1,
         "spans": [{"label": "disc", "points": [[10, 10], [10, 50], [60, 50], [60, 10]]}]}
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4), max_leaves=12)
_LINE = st.one_of(st.binary(max_size=80), _JSON.map(json.dumps),
                  st.dictionaries(st.sampled_from(sorted(_GOOD)), _JSON, max_size=4).map(
                      lambda patch: json.dumps({**_GOOD, **patch, "_input_hash": 7})))


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    datasets.generate_shapes(folder / "img", 1)
    (folder / "img" / "shapes-0-0000.jpg").rename(folder / "img" / "a.jpg")
    return folder


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, max_size=12))
def test_any_eval_file_yields_its_good_records_and_never_raises(one_image, lines):
    """Untrusted eval lines (random bytes, random JSON, a good record with random fields): reading never raises,
    the good record (another input) always comes through, and every other non-blank line is used or set aside."""
    tmp_path = one_image
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in
                                [json.dumps(_GOOD).encode(), *lines]) + b"\n")
    found = evalset.read(str(path), evalset._file_lines(path), LABELS, tmp_path / "img", tmp_path / "blobs")
    assert any(a["input_hash"] == "5" for a in found.annotations)
    assert len(found.annotations) <= found.lines - found.set_aside <= found.lines


# -- how held-back rounds are recorded -------------------------------------------------------------------------------
def test_a_ledger_from_before_the_gate_is_migrated_and_held_back_rounds_count_as_trained(tmp_path):
    db = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE rounds (id INTEGER PRIMARY KEY, state TEXT NOT NULL, started_at REAL NOT NULL, "
                 "finished_at REAL, seq INTEGER NOT NULL, accepted INTEGER, n_train INTEGER, n_eval INTEGER, "
                 "steps INTEGER, global_step INTEGER, checkpoint TEXT, metrics TEXT, timings TEXT, version INTEGER, "
                 "error TEXT)")
    conn.execute("INSERT INTO rounds (state, started_at, seq, checkpoint) VALUES ('published', 0, 5, 'ck/1')")
    conn.commit()
    conn.close()
    history = History(db)
    try:
        round_id = history.start_round(9)
        history.finish_round(round_id, "held_back", checkpoint="ck/2", gate={"passed": False, "served": 0.5})
        assert history.last_trained_seq() == 9, "a held-back round's data is not trained on again at once"
        assert history.checkpoints()[0] == (round_id, "ck/2"), "the next round trains on from the held-back one"
        assert history.rounds()[-1]["gate"] == {"passed": False, "served": 0.5}
    finally:
        history.close()


def test_held_back_rounds_are_counted_and_the_gate_numbers_exported():
    metrics = Metrics()
    metrics.round_finished("held_back", {"train": 3.0}, {"mAP": 0.2},
                           gate={"metric": "mAP@0.5", "candidate": 0.31, "served": 0.52, "passed": False})
    text = metrics.render()
    assert 'odal_rounds_total{state="held_back"} 1' in text and "odal_versions_published_total 0" in text
    assert "odal_gate_candidate 0.31" in text and "odal_gate_served 0.52" in text and "odal_gate_passed 0" in text
