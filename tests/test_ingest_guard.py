"""The guarded boundaries of the ingest: one line's problem stays that line's, named whole, listed until fixed."""

from __future__ import annotations

import json
import sqlite3

import pytest
from structlog.testing import capture_logs

from odal.common.errors import InvalidRecord
from odal.daemon.handlers import ingest
from odal.daemon.sources.prodigy_format import parse_record
from test_ingest import LABELS, Workspace, set_aside_events


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace(tmp_path)
    yield workspace
    workspace.ledger.close()


def test_a_line_with_several_problems_names_every_one_of_them_in_one_message(ws):
    span = ws.record(0)["spans"][0]
    record = ws.record(0, _timestamp="yesterday", spans=[
        dict(span, label="raccoon"), span, dict(span, points=[[float("nan"), 1], [5, 5]]), "box"])
    ws.append(ws.record(1), record)
    with capture_logs() as logs:
        ws.ingest()
    (event,) = set_aside_events(logs)
    assert event["line"] == 2 and event["error_class"] == "InvalidRecord" and event["file"] == str(ws.export)
    for problem in ("_timestamp must be a finite number", "span 0 (label 'raccoon'): label not in the label set",
                    f"span 2 (label {span['label']!r}): point [nan, 1] is not finite", "span 3 is not an object"):
        assert problem in event["error"]
    assert "span 1" not in event["error"]
    assert ws.ledger.invalid_items()[0]["error"] == event["error"]


def test_many_bad_spans_make_one_bounded_message_in_bounded_time():
    record = {"_input_hash": 1, "answer": "accept", "image": "a.jpg", "width": 10, "height": 10,
              "spans": ["box"] * 10_000}
    with pytest.raises(InvalidRecord) as raised:
        parse_record(record, LABELS)
    assert len(str(raised.value)) < 1000 and str(raised.value).endswith("; spans 20 to 9999 not checked")
    record["spans"] *= 2
    with pytest.raises(InvalidRecord, match=r"^too many spans \(20000 > 10000\)$"):
        parse_record(record, LABELS)


def test_huge_numbers_are_named_not_echoed():
    record = {"_input_hash": "9" * 5000, "answer": "x" * 100_000, "image": "a.jpg", "width": 1e300}
    with pytest.raises(InvalidRecord) as raised:
        parse_record(record, LABELS)
    message = str(raised.value)
    assert len(message) < 1000
    assert "_input_hash must be an integer of at most 20 digits" in message and "width must be a number" in message


def test_a_line_longer_than_the_limit_is_set_aside_unread_and_the_lines_around_it_come_in(ws, monkeypatch):
    monkeypatch.setattr(ingest, "MAX_LINE_BYTES", 4096)
    long_line = json.dumps(ws.record(1, text="x" * 50_000))
    ws.append(ws.record(0), long_line, ws.record(2))
    with capture_logs() as logs:
        stats = ws.ingest()
    (event,) = set_aside_events(logs)
    assert event["line"] == 2 and f"longer than 4096 bytes ({len(long_line) + 1} bytes)" in event["error"]
    assert stats["accept"] == 2 and ws.ledger.counts()["accepted"] == 2
    with open(ws.export, "a") as out:  # a long last line still being written waits, then is set aside whole
        out.write(long_line[:10_000])
    assert ws.ingest()["lines"] == 0
    with open(ws.export, "a") as out:
        out.write(long_line[10_000:] + "\n")
    assert ws.ingest()["set_aside"] == 1
    assert sorted(i["line"] for i in ws.ledger.invalid_items()) == [2, 4]


def test_a_row_the_ledger_refuses_sets_aside_only_its_line_logged_once_with_the_error_class(ws):
    """Real SQLite refusing one row (a trigger): the 499 other lines of the chunk and the read position are kept."""
    refused = str(ws.record(1)["_input_hash"])
    conn = sqlite3.connect(ws.ledger_path)
    conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON annotations WHEN NEW.input_hash = '{refused}' "
                 "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    conn.commit()
    conn.close()
    ws.append(ws.record(0), ws.record(1), ws.record(2))
    with capture_logs() as logs:
        stats = ws.ingest()
    (event,) = set_aside_events(logs)
    assert event["line"] == 2 and event["error_class"] == "IntegrityError" and "refused by the test" in event["error"]
    assert stats["accept"] == 2 and ws.ledger.counts() == {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 1}
    assert ws.ingest()["lines"] == 0  # the read position moved past all three


def test_a_corrected_answer_appended_later_takes_the_bad_line_off_the_set_aside_list(ws):
    """Prodigy appends a re-annotation; the old bad line of that input is no longer something to fix."""
    bad = ws.record(1, spans=[dict(ws.record(1)["spans"][0], label="raccoon")])
    ws.append(ws.record(0), bad, ws.record(2))
    ws.ingest()
    assert [i["line"] for i in ws.ledger.invalid_items()] == [2]
    ws.append(ws.record(1, timestamp=2000))  # the corrected answer, line 4
    stats = ws.ingest()
    assert stats["cleared"] == 1 and ws.ledger.invalid_items() == []
    assert ws.ledger.counts() == {"accepted": 3, "rejected": 0, "ignored": 0, "invalid": 0}
    ws.append(bad)  # a bad line AFTER the good one is the newest word on that input: it stays listed
    ws.ingest()
    assert [i["line"] for i in ws.ledger.invalid_items()] == [5]
