"""Reading a real Prodigy SQLite database (Prodigy's peewee schema) into the ledger, read-only and incrementally."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from odal.daemon.sources import datasets
from odal.common.errors import SchemaError
from odal.daemon.handlers.ingest_db import ingest_prodigy_db
from odal.daemon.sources.prodigy_db import check_schema
from odal.daemon.store.ledger import Ledger

LABELS = list(datasets.SHAPE_LABELS)

PRODIGY_SCHEMA = """
CREATE TABLE "dataset" ("id" INTEGER NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, "created" INTEGER NOT NULL,
                        "meta" BLOB NOT NULL, "session" INTEGER NOT NULL);
CREATE UNIQUE INDEX "dataset_name" ON "dataset" ("name");
CREATE TABLE "example" ("id" INTEGER NOT NULL PRIMARY KEY, "input_hash" INTEGER NOT NULL,
                        "task_hash" INTEGER NOT NULL, "content" BLOB NOT NULL);
CREATE TABLE "link" ("id" INTEGER NOT NULL PRIMARY KEY, "example_id" INTEGER NOT NULL,
                     "dataset_id" INTEGER NOT NULL,
                     FOREIGN KEY ("example_id") REFERENCES "example" ("id"),
                     FOREIGN KEY ("dataset_id") REFERENCES "dataset" ("id"));
"""


class ProdigyDB:
    """A Prodigy database as Prodigy writes it: each example linked to its dataset and to a session dataset."""

    def __init__(self, path: Path, schema: str = PRODIGY_SCHEMA) -> None:
        self.path = path
        conn = sqlite3.connect(path)
        conn.executescript(schema)
        conn.close()

    def dataset_id(self, conn: sqlite3.Connection, name: str, session: bool) -> int:
        row = conn.execute("SELECT id FROM dataset WHERE name = ?", (name,)).fetchone()
        if row:
            return row[0]
        return conn.execute("INSERT INTO dataset (name, created, meta, session) VALUES (?, ?, ?, ?)",
                            (name, int(time.time()), b"{}", int(session))).lastrowid

    def add(self, dataset: str, *contents: dict | str, session: str = "2024-01-01_10-00-00") -> None:
        conn = sqlite3.connect(self.path)
        with conn:
            named, sess = self.dataset_id(conn, dataset, False), self.dataset_id(conn, session, True)
            for content in contents:
                text = content if isinstance(content, str) else json.dumps(content)
                obj = content if isinstance(content, dict) else {}
                example = conn.execute(
                    "INSERT INTO example (input_hash, task_hash, content) VALUES (?, ?, ?)",
                    (obj.get("_input_hash", 0), obj.get("_task_hash", 0), text.encode("utf-8"))).lastrowid
                for dataset_id in (named, sess):
                    conn.execute("INSERT INTO link (example_id, dataset_id) VALUES (?, ?)", (example, dataset_id))
        conn.close()


@pytest.fixture
def env(tmp_path):
    items = datasets.generate_shapes(tmp_path / "data", 6, seed=11)
    db = ProdigyDB(tmp_path / "prodigy.db")
    ledger = Ledger(tmp_path / "work" / "odal.sqlite")

    def record(index, answer="accept", **extra):
        obj = datasets.prodigy_record(items[index], items[index].image.name, answer, 1000)
        obj.update(extra)
        return obj

    def ingest(dataset="boxes", led=None):
        return ingest_prodigy_db(db.path, dataset, led or ledger, LABELS, tmp_path / "data", tmp_path / "blobs")

    yield {"db": db, "ledger": ledger, "record": record, "ingest": ingest, "tmp": tmp_path}
    ledger.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prodigy_schema_passes_the_check(env):
    check_schema(env["db"].path)


@pytest.mark.parametrize("schema, message", [
    (PRODIGY_SCHEMA.replace('"content" BLOB NOT NULL', '"data" BLOB'), "table example lacks column(s) content"),
    (PRODIGY_SCHEMA.replace('"link"', '"links"'), "table link is missing"),
    (PRODIGY_SCHEMA.replace('"session" INTEGER NOT NULL', '"x" INTEGER'), "table dataset lacks column(s) session"),
], ids=["renamed-column", "renamed-table", "dataset-session"])
def test_a_differing_schema_raises_schema_error_naming_the_difference(tmp_path, schema, message):
    db = ProdigyDB(tmp_path / "prodigy.db", schema)
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_schema(db.path)
    with Ledger(tmp_path / "odal.sqlite") as ledger, pytest.raises(SchemaError):
        ingest_prodigy_db(db.path, "boxes", ledger, LABELS, tmp_path, tmp_path / "blobs")


def test_a_missing_file_or_a_file_that_is_not_a_database_raises_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="does not exist"):
        check_schema(tmp_path / "nope.db")
    (tmp_path / "text.db").write_text("hello, not SQLite " * 100)
    with pytest.raises(SchemaError, match="cannot be read"):
        check_schema(tmp_path / "text.db")


def test_new_examples_of_the_named_dataset_are_read_incrementally(env):
    env["db"].add("boxes", env["record"](0), env["record"](1), env["record"](2, "reject"))
    env["db"].add("other", env["record"](3))
    stats = env["ingest"]()
    assert (stats["lines"], stats["inserted"]) == (3, 3)  # once each, although also linked to a session
    assert env["ledger"].counts() == {"accepted": 2, "rejected": 1, "ignored": 0, "invalid": 0}
    env["db"].add("boxes", env["record"](4), env["record"](5, "ignore"))
    stats = env["ingest"]()
    assert (stats["lines"], stats["inserted"]) == (2, 2)
    assert env["ingest"]()["lines"] == 0
    assert env["ledger"].counts() == {"accepted": 3, "rejected": 1, "ignored": 1, "invalid": 0}


def test_exactly_once_across_restarts(env):
    env["db"].add("boxes", env["record"](0), env["record"](1))
    env["ingest"]()
    with Ledger(env["ledger"].path) as again:
        assert env["ingest"](led=again)["lines"] == 0
        assert again.counts()["accepted"] == 2


def test_a_newer_answer_in_the_database_replaces_the_older_one(env):
    env["db"].add("boxes", env["record"](0))
    env["ingest"]()
    env["db"].add("boxes", env["record"](0, "reject", _timestamp=5000))
    env["ingest"]()
    assert env["ledger"].counts()["accepted"] == 0 and env["ledger"].counts()["rejected"] == 1


def test_bad_content_is_set_aside_naming_the_database_and_example_id(env):
    env["db"].add("boxes", env["record"](0), "{not json", env["record"](1, image="../../etc/passwd"),
                  env["record"](2))
    with capture_logs() as logs:
        stats = env["ingest"]()
    assert stats["inserted"] == 2 and stats["set_aside"] == 2
    events = [e for e in logs if e["event"] == "record_set_aside"]
    assert [e["line"] for e in events] == [2, 3]
    assert all(e["file"] == f"{env['db'].path}#boxes" and e["dataset"] == "boxes" for e in events)
    assert "malformed JSON" in events[0]["error"] and "outside data_dir" in events[1]["error"]
    assert env["ledger"].counts()["invalid"] == 2


def test_the_database_is_opened_read_only_and_left_unchanged(env):
    env["db"].add("boxes", env["record"](0))
    before = digest(env["db"].path)
    env["ingest"]()
    assert digest(env["db"].path) == before
    assert sorted(p.name for p in env["tmp"].glob("prodigy.db*")) == ["prodigy.db"]


def test_a_locked_database_logs_a_warning_and_is_read_on_the_next_call(env):
    env["db"].add("boxes", env["record"](0), env["record"](1))
    holder = sqlite3.connect(env["db"].path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # as Prodigy does while writing (rollback journal: readers are locked out)
    try:
        with capture_logs() as logs:
            stats = ingest_prodigy_db(env["db"].path, "boxes", env["ledger"], LABELS, env["tmp"] / "data",
                                      env["tmp"] / "blobs", timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert stats["locked"] and stats["inserted"] == 0
    assert [(e["event"], e["log_level"]) for e in logs] == [("prodigy_db_locked", "warning")]
    assert env["ingest"]()["inserted"] == 2


def test_ids_going_backwards_restart_reading_from_the_start(env):
    env["db"].add("boxes", env["record"](0), env["record"](1), env["record"](2))
    env["ingest"]()
    conn = sqlite3.connect(env["db"].path)
    with conn:  # the dataset was dropped and annotated again: ids are reused
        conn.execute("DELETE FROM link")
        conn.execute("DELETE FROM example")
        conn.execute("DELETE FROM dataset")
    conn.close()
    env["db"].add("boxes", env["record"](3))
    stats = env["ingest"]()
    assert stats["restarted"] and stats["inserted"] == 1
    assert env["ledger"].counts()["accepted"] == 4


def test_a_dataset_that_does_not_exist_yet_reads_nothing(env):
    stats = env["ingest"]("not-yet")
    assert stats["lines"] == 0 and not stats["locked"]


def test_a_dataset_read_again_from_the_start_keeps_only_the_lines_that_are_still_bad(env):
    env["db"].add("boxes", env["record"](0), "{not json", env["record"](1, answer="maybe"))
    env["ingest"]()
    assert env["ledger"].counts()["invalid"] == 2
    conn = sqlite3.connect(env["db"].path)
    with conn:  # the bad answer was corrected in Prodigy (same example id)
        conn.execute("UPDATE example SET content = ? WHERE id = 3", (json.dumps(env["record"](1)).encode(),))
    conn.close()
    env["ledger"].forget_all_sources()  # odal retry
    stats = env["ingest"]()
    assert stats["cleared"] == 2 and stats["inserted"] == 1
    assert [(i["line"], i["error"][:9]) for i in env["ledger"].invalid_items()] == [(2, "malformed")]
    assert env["ledger"].counts()["accepted"] == 2
