"""The SQLite ledger: exactly once, newest answer wins, set-aside lines, source states, one transaction per commit."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from odal.daemon.store.ledger import SCHEMA_VERSION, WAITING_LINE_BYTES, Ledger
from odal.daemon.sources.prodigy_format import Annotation, Box


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
    assert stats == {"inserted": 3, "updated": 0, "unchanged": 0, "stale": 0, "invalid": 0, "cleared": 0,
                     "new_accept": 1, "new_reject": 1, "new_ignore": 1}
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
    bad = [("f.jsonl", 3, "malformed JSON", '{"image": ', None), ("f.jsonl", 4, "not an object", b"[1]", None)]
    assert ledger.commit("f.jsonl", None, invalid=bad)["invalid"] == 2
    assert ledger.commit("f.jsonl", None, invalid=bad)["invalid"] == 0  # re-reading does not duplicate
    assert ledger.commit("f.jsonl", None, invalid=[("f.jsonl", 3, "other", "different", None)])["invalid"] == 1
    assert ledger.counts()["invalid"] == 3
    latest = ledger.invalid_items(2)
    assert len(latest) == 2 and latest[0]["excerpt"] == "different" and latest[0]["line"] == 3
    assert set(latest[0]) == {"source", "line", "error", "excerpt", "at", "image"}


def test_invalid_excerpt_is_short_even_for_a_huge_line(ledger):
    ledger.commit("f", None, invalid=[("f", 1, "bad", "x" * 1_000_000, None)])
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
    assert check.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
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


def test_a_source_read_again_from_its_start_replaces_its_set_aside_rows_and_no_other_sources(ledger):
    ledger.commit("a", None, invalid=[("a", 1, "bad", "x", None), ("a", 2, "bad", "y", None)])
    ledger.commit("b", None, invalid=[("b", 1, "bad", "z", None)])
    stats = ledger.commit("a", {"offset": 9}, invalid=[("a", 2, "still bad", "y", None)], clear_invalid="a")
    assert stats["cleared"] == 2 and stats["invalid"] == 1
    assert sorted((r["source"], r["line"]) for r in ledger.invalid_items()) == [("a", 2), ("b", 1)]


def test_a_line_waiting_for_an_image_keeps_the_whole_line_and_can_be_replaced_by_its_annotation(ledger):
    line = b'{"image": "later.jpg", "answer": "accept"}'
    ledger.commit("f", None, invalid=[("f", 7, "image file not found", line, "/data/later.jpg"),
                                      ("f", 8, "malformed JSON", b"{", None)])
    waiting = ledger.waiting_for("/data/later.jpg")
    assert [(w["source"], w["line"], bytes(w["raw"])) for w in waiting] == [("f", 7, line)]
    assert ledger.waiting_for("/data/other.jpg") == []
    stats = ledger.commit("f", None, [row(ann("1"), line=7, source="f")], replace_invalid=[waiting[0]["id"]])
    assert stats["inserted"] == 1 and stats["cleared"] == 1
    assert [r["line"] for r in ledger.invalid_items()] == [8] and ledger.counts()["accepted"] == 1


def test_a_huge_line_waiting_for_an_image_is_kept_as_an_excerpt_only(ledger):
    huge = "x" * (WAITING_LINE_BYTES + 1)
    ledger.commit("f", None, invalid=[("f", 1, "image file not found", huge, "/data/a.jpg")])
    assert ledger.waiting_for("/data/a.jpg") == [] and ledger.counts()["invalid"] == 1


def _version_1_ledger(path):
    """A ledger as odal wrote it before set-aside lines could wait for their image (schema 1)."""
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO ledger_meta VALUES ('schema_version', '1');
        CREATE TABLE invalid (id INTEGER PRIMARY KEY, source TEXT NOT NULL, line INTEGER NOT NULL,
            digest TEXT NOT NULL, error TEXT NOT NULL, excerpt TEXT NOT NULL, at REAL NOT NULL,
            UNIQUE (source, line, digest));
        INSERT INTO invalid (source, line, digest, error, excerpt, at) VALUES ('f', 3, 'd', 'bad', '{', 1.0);
        CREATE TABLE annotations (input_hash TEXT PRIMARY KEY, task_hash TEXT, timestamp REAL NOT NULL,
            answer TEXT NOT NULL, image_path TEXT, width INTEGER, height INTEGER, boxes TEXT NOT NULL,
            source TEXT NOT NULL, line INTEGER NOT NULL, seq INTEGER NOT NULL, ingested_at REAL NOT NULL,
            prev_answer TEXT);
        INSERT INTO annotations VALUES ('i1', 't1', 1.0, 'accept', '/d/a.jpg', 4, 3, '[]', 'f', 1, 1, 1.0, NULL);
        CREATE TABLE sources (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO sources VALUES ('f', '{}', 1.0);
    """)
    old.close()
    return path


def test_a_version_1_ledger_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    path = _version_1_ledger(tmp_path / "old.sqlite")
    with Ledger(path) as led:
        assert [(r["source"], r["line"], r["image"]) for r in led.invalid_items()] == [("f", 3, None)]
        led.commit("f", None, invalid=[("f", 4, "image file not found", "{}", "/d/x.jpg")])
        assert [w["line"] for w in led.waiting_for("/d/x.jpg")] == [4]
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchone() == ("3",)
    assert "input_hash" in {row[1] for row in check.execute("PRAGMA table_info(invalid)")}
    check.close()


def test_a_read_only_open_reads_an_older_ledger_and_changes_nothing(tmp_path):
    """What ``odal status`` uses: no write (a user who may only read the workspace), no migration behind the
    daemon's back."""
    path = _version_1_ledger(tmp_path / "old.sqlite")
    before = path.read_bytes()
    with Ledger(path, readonly=True) as led:
        assert led.counts()["accepted"] == 1 and led.counts()["invalid"] == 1
        assert [(r["source"], r["line"], r["image"]) for r in led.invalid_items()] == [("f", 3, None)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            led.forget_source("f")
    assert path.read_bytes() == before


def test_a_ledger_written_by_a_newer_odal_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    newer = sqlite3.connect(path)
    newer.executescript(f"""CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                           INSERT INTO ledger_meta VALUES ('schema_version', '{SCHEMA_VERSION + 1}');""")
    newer.close()
    with pytest.raises(RuntimeError, match="newer than this odal"):
        Ledger(path)


def test_forget_all_sources_names_them_and_each_is_read_again(ledger):
    ledger.commit("b", {"offset": 5}, [])
    ledger.commit("a", {"offset": 7}, [])
    assert ledger.forget_all_sources() == ["a", "b"]
    assert ledger.source_state("a") is None and ledger.source_state("b") is None


def test_set_aside_rows_of_sources_that_are_gone_can_be_dropped(ledger):
    ledger.commit("a", None, invalid=[("a", 1, "bad", "x", None), ("a", 2, "bad", "y", None)])
    ledger.commit("b", None, invalid=[("b", 1, "bad", "z", None)])
    assert ledger.drop_invalid_except(["b", "c"]) == 2
    assert [(r["source"], r["line"]) for r in ledger.invalid_items()] == [("b", 1)]
    assert ledger.drop_invalid_except([]) == 1 and ledger.counts()["invalid"] == 0
