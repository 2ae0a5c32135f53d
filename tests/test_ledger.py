"""The SQLite ledger: exactly once, newest answer wins, set-aside lines, source states, one transaction per commit."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from odal.daemon.ledger import Ledger
from odal.daemon.prodigy_format import Annotation, Box


def ann(input_hash="1", timestamp=100.0, answer="accept", boxes=(("a", 0.1, 0.1, 0.5, 0.5),), task_hash="t"):
    return Annotation(input_hash, task_hash, timestamp, answer, f"{input_hash}.jpg", 10, 10,
                      tuple(Box(*b) for b in boxes) if answer == "accept" else (), None, None)


def row(a: Annotation, line=1, source="export.jsonl"):
    return (a, f"/data/{a.input_hash}.jpg", 10, 10, source, line)


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "work" / "odal.sqlite") as led:
        yield led


def test_commit_inserts_rows_and_source_state_and_counts_answers(ledger):
    stats = ledger.commit("export.jsonl", {"offset": 30}, [row(ann("1")), row(ann("2", answer="reject")),
                                                           row(ann("3", answer="ignore"))])
    assert stats == {"inserted": 3, "updated": 0, "unchanged": 0, "stale": 0, "invalid": 0}
    assert ledger.counts() == {"accepted": 1, "rejected": 1, "ignored": 1, "invalid": 0}
    assert ledger.source_state("export.jsonl") == {"offset": 30}
    assert ledger.source_state("other") is None
    assert ledger.answered_hashes() == {"1", "2", "3"}
    assert ledger.max_seq() == 3


def test_rows_and_state_survive_a_restart_and_recommitting_the_same_rows_changes_nothing(tmp_path):
    path = tmp_path / "odal.sqlite"
    with Ledger(path) as first:
        first.commit("s", {"offset": 10}, [row(ann("1")), row(ann("2"))])
    with Ledger(path) as second:
        assert second.source_state("s") == {"offset": 10}
        stats = second.commit("s", {"offset": 10}, [row(ann("1")), row(ann("2"))])
        assert stats["unchanged"] == 2 and stats["inserted"] == 0
        assert second.counts()["accepted"] == 2 and second.max_seq() == 2


def test_an_older_answer_read_later_does_not_override_the_newer_one(ledger):
    ledger.commit("s", None, [row(ann("1", timestamp=200))])
    stats = ledger.commit("s", None, [row(ann("1", timestamp=100, answer="reject"), line=2)])
    assert stats["stale"] == 1
    assert ledger.counts()["accepted"] == 1 and ledger.max_seq() == 1


def test_a_newer_answer_replaces_the_row_and_bumps_seq(ledger):
    ledger.commit("s", None, [row(ann("1", timestamp=100))])
    newer = ann("1", timestamp=200, boxes=(("a", 0.1, 0.1, 0.5, 0.5), ("b", 0.6, 0.6, 0.9, 0.9)))
    assert ledger.commit("s", None, [row(newer, line=2)])["updated"] == 1
    (item,) = ledger.accepted()
    assert [b["label"] for b in item["boxes"]] == ["a", "b"] and item["timestamp"] == 200 and item["seq"] == 2


def test_equal_timestamps_the_later_read_wins(ledger):
    ledger.commit("s", None, [row(ann("1", timestamp=100)), row(ann("1", timestamp=100, answer="ignore"), line=2)])
    assert ledger.counts() == {"accepted": 0, "rejected": 0, "ignored": 1, "invalid": 0}


def test_a_reject_after_an_accept_removes_it_from_training_and_counts_as_a_change(ledger):
    ledger.commit("s", None, [row(ann("1")), row(ann("2"))])
    seq = ledger.max_seq()
    assert ledger.accepted_changes_since(seq) == 0
    ledger.commit("s", None, [row(ann("1", timestamp=300, answer="reject"), line=3)])
    assert [a["input_hash"] for a in ledger.accepted()] == ["2"]
    assert ledger.accepted_changes_since(seq) == 1
    ledger.commit("s", None, [row(ann("9", answer="ignore"), line=4)])
    assert ledger.accepted_changes_since(seq) == 1  # a new ignore does not change the training set
    ledger.commit("s", None, [row(ann("10"), line=5)])
    assert ledger.accepted_changes_since(seq) == 2


def test_accepted_is_ordered_stably_by_input_hash_with_boxes_as_dicts(ledger):
    ledger.commit("s", None, [row(ann(h)) for h in ("30", "-5", "12")])
    ledger.commit("s", None, [row(ann("-5", timestamp=500), line=9)])
    items = ledger.accepted()
    assert [a["input_hash"] for a in items] == ["-5", "12", "30"]
    assert items[0]["boxes"] == [{"label": "a", "xmin": 0.1, "ymin": 0.1, "xmax": 0.5, "ymax": 0.5}]
    assert (items[0]["image_path"], items[0]["width"], items[0]["height"]) == ("/data/-5.jpg", 10, 10)


def test_invalid_lines_are_kept_once_per_source_line_and_content(ledger):
    bad = [("f.jsonl", 3, "malformed JSON", '{"image": '), ("f.jsonl", 4, "not an object", b"[1]")]
    assert ledger.commit("f.jsonl", None, invalid=bad)["invalid"] == 2
    assert ledger.commit("f.jsonl", None, invalid=bad)["invalid"] == 0  # re-reading does not duplicate
    assert ledger.commit("f.jsonl", None, invalid=[("f.jsonl", 3, "other", "different")])["invalid"] == 1
    assert ledger.counts()["invalid"] == 3
    latest = ledger.invalid_items(2)
    assert len(latest) == 2 and latest[0]["excerpt"] == "different" and latest[0]["line"] == 3
    assert set(latest[0]) == {"source", "line", "error", "excerpt", "at"}


def test_invalid_excerpt_is_short_even_for_a_huge_line(ledger):
    ledger.commit("f", None, invalid=[("f", 1, "bad", "x" * 1_000_000)])
    assert len(ledger.invalid_items(1)[0]["excerpt"]) == 300


def test_a_failing_commit_writes_nothing_neither_rows_nor_state(ledger):
    unbindable = (ann("2"), "/data/2.jpg", object(), 10, "s", 2)
    with pytest.raises(sqlite3.Error):
        ledger.commit("s", {"offset": 99}, [row(ann("1")), unbindable])
    assert ledger.counts()["accepted"] == 0 and ledger.source_state("s") is None
    ledger.commit("s", {"offset": 5}, [row(ann("1"))])  # the ledger is still usable
    assert ledger.counts()["accepted"] == 1


def test_forget_source_lets_the_source_be_read_again(ledger):
    ledger.commit("s", {"offset": 5}, [])
    ledger.forget_source("s")
    assert ledger.source_state("s") is None


def test_ledger_shares_its_file_with_other_modules_tables_in_wal_mode(tmp_path):
    path = tmp_path / "odal.sqlite"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE rounds (id INTEGER PRIMARY KEY, state TEXT)")
    other.execute("INSERT INTO rounds (state) VALUES ('done')")
    other.commit()
    other.close()
    with Ledger(path) as led:
        led.commit("s", {"offset": 1}, [row(ann("1"))])
        assert led._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with Ledger(path) as again:  # reopening keeps everything
        assert again.counts()["accepted"] == 1
    check = sqlite3.connect(path)
    assert check.execute("SELECT state FROM rounds").fetchall() == [("done",)]
    assert check.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone() == ("1",)
    check.close()


def test_a_ledger_created_in_one_thread_can_be_used_from_another(ledger):
    errors = []

    def work():
        try:
            ledger.commit("s", {"offset": 1}, [row(ann("1"))])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors and ledger.counts()["accepted"] == 1
