"""Reading ``db-out`` JSONL exports into the ledger: exactly once, incremental, bad lines set aside and logged."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from structlog.testing import capture_logs

from odal.daemon.sources import datasets
from odal.daemon.handlers.ingest import CHUNK_LINES, ingest_export_file, retry_waiting
from odal.daemon.watchers.export_dir import export_files
from odal.daemon.store.ledger import Ledger
from odal.daemon.sources.prodigy_format import parse_record

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "prodigy" / "db-out-image-manual.jsonl"
LABELS = list(datasets.SHAPE_LABELS)


class Workspace:
    """A data dir of generated images, a blob dir, an export file and a ledger, all real."""

    def __init__(self, root: Path, images: int = 4) -> None:
        self.root = root
        self.data = root / "data"
        self.blobs = root / "work" / "blobs"
        self.export = root / "export" / "annotations.jsonl"
        self.export.parent.mkdir(parents=True)
        self.items = datasets.generate_shapes(self.data, images, seed=3)
        self.ledger_path = root / "work" / "odal.sqlite"
        self.ledger = Ledger(self.ledger_path)

    def record(self, index: int, answer: str = "accept", timestamp: int = 1000, **extra) -> dict:
        obj = datasets.prodigy_record(self.items[index], self.items[index].image.name, answer, timestamp)
        obj.update(extra)
        return obj

    def append(self, *lines: dict | str, path: Path | None = None) -> None:
        with open(path or self.export, "a") as out:
            for line in lines:
                out.write((line if isinstance(line, str) else json.dumps(line)) + "\n")

    def ingest(self, path: Path | None = None) -> dict:
        return ingest_export_file(path or self.export, self.ledger, LABELS, self.data, self.blobs)

    def reopen(self) -> None:
        self.ledger.close()
        self.ledger = Ledger(self.ledger_path)


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace(tmp_path)
    yield workspace
    workspace.ledger.close()


def set_aside_events(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "record_set_aside"]


# -------------------------------------------------------------------------------------------- the basics


def test_real_fixture_record_ingests_unchanged(tmp_path):
    """The published db-out record, byte for byte, becomes one accepted row with its three boxes."""
    data = tmp_path / "data"
    image = data / "sample/path/redacted/04-F-0269_Global_Screening_Guidance-03.jpg"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (800, 1035), "white").save(image, format="JPEG")
    export = tmp_path / "db-out.jsonl"
    export.write_bytes(FIXTURE.read_bytes())
    labels = ["CONTENT", "REDACTION"]
    with Ledger(tmp_path / "odal.sqlite") as ledger, capture_logs() as logs:
        stats = ingest_export_file(export, ledger, labels, data, tmp_path / "blobs")
        assert stats["accept"] == 1 and stats["inserted"] == 1 and stats["set_aside"] == 0
        (item,) = ledger.accepted()
    expected = parse_record(json.loads(FIXTURE.read_text()), labels)
    assert item["input_hash"] == "1413334570" and item["image_path"] == str(image.resolve())
    assert (item["width"], item["height"], item["timestamp"]) == (800, 1035, 1638214078)
    assert item["boxes"] == [box.as_dict() for box in expected.boxes]
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


def test_accept_reject_and_ignore_are_all_recorded_but_only_accepts_train(ws):
    ws.append(ws.record(0), ws.record(1, "reject"), ws.record(2, "ignore"), ws.record(3))
    stats = ws.ingest()
    assert (stats["lines"], stats["accept"], stats["reject"], stats["ignore"]) == (4, 2, 1, 1)
    assert ws.ledger.counts() == {"accepted": 2, "rejected": 1, "ignored": 1, "invalid": 0}
    assert len(ws.ledger.answered_hashes()) == 4
    assert {a["image_path"] for a in ws.ledger.accepted()} == {str(ws.items[i].image.resolve()) for i in (0, 3)}


def test_accepted_rows_record_the_real_pixel_size_and_normalised_boxes(ws):
    ws.append(ws.record(0))
    ws.ingest()
    (item,) = ws.ledger.accepted()
    truth = ws.items[0]
    assert (item["width"], item["height"]) == (truth.width, truth.height)
    label, x0, y0, x1, y1 = truth.boxes[0]
    assert item["boxes"][0] == {"label": label, "xmin": x0 / truth.width, "ymin": y0 / truth.height,
                                "xmax": x1 / truth.width, "ymax": y1 / truth.height}


def test_exactly_once_across_restarts_and_rereads(ws):
    """A new Ledger on the same file re-ingesting the same export adds nothing; a forced full re-read neither."""
    ws.append(*(ws.record(i) for i in range(4)))
    assert ws.ingest()["inserted"] == 4
    seq = ws.ledger.max_seq()
    ws.reopen()
    again = ws.ingest()
    assert again["lines"] == 0 and ws.ledger.counts()["accepted"] == 4
    ws.ledger.forget_source(str(ws.export.absolute()))  # as after a crash that lost the read position
    reread = ws.ingest()
    assert reread["lines"] == 4 and reread["unchanged"] == 4 and reread["inserted"] == 0
    assert ws.ledger.counts()["accepted"] == 4 and ws.ledger.max_seq() == seq


# ------------------------------------------------------------------------------------- last answer wins


def test_an_older_answer_later_in_the_file_does_not_override_a_newer_one(ws):
    ws.append(ws.record(0, timestamp=2000), ws.record(0, "reject", timestamp=1000))
    stats = ws.ingest()
    assert stats["stale"] == 1 and ws.ledger.counts()["accepted"] == 1


def test_a_newer_correction_replaces_the_boxes(ws):
    first = ws.record(0, timestamp=1000)
    corrected = ws.record(0, timestamp=2000)
    corrected["spans"] = corrected["spans"][:1] + [dict(corrected["spans"][0], label="disc", points=[
        [1, 1], [1, 20], [20, 20], [20, 1]])]
    ws.append(first)
    ws.ingest()
    ws.append(corrected)
    assert ws.ingest()["updated"] == 1
    assert len(ws.ledger.accepted()[0]["boxes"]) == 2


def test_a_reject_after_an_accept_removes_the_image_from_training(ws):
    ws.append(ws.record(0, timestamp=1000), ws.record(1, timestamp=1000))
    ws.ingest()
    seq = ws.ledger.max_seq()
    ws.append(ws.record(0, "reject", timestamp=3000))
    ws.ingest()
    assert [a["input_hash"] for a in ws.ledger.accepted()] == [str(datasets.input_hash(ws.items[1].image))]
    assert ws.ledger.counts()["rejected"] == 1 and ws.ledger.accepted_changes_since(seq) == 1


# ------------------------------------------------------------------------------------------- bad lines


def _bad_lines(ws: Workspace) -> dict[str, tuple[str, str]]:
    """kind -> (line text, part of the expected error)."""
    (ws.data / "notes.jpg").write_text("this is text, not a JPEG")
    (ws.root / "outside.jpg").write_bytes(ws.items[0].image.read_bytes())

    def rec(**changes) -> str:
        obj = ws.record(1)
        obj.update(changes)
        return json.dumps(obj)

    span = ws.record(1)["spans"][0]
    no_image = ws.record(1)
    for key in ("image", "path", "meta"):
        no_image.pop(key)
    return {
        "malformed-json": ('{"image": "a.jpg", "answer": ', "malformed JSON"),
        "not-an-object": ("[1, 2, 3]", "not a JSON object"),
        "no-image": (json.dumps(no_image), "no image"),
        "missing-image-file": (rec(image="gone.jpg", path="gone.jpg", meta={"file": "gone.jpg"}),
                               "image file not found: gone.jpg"),
        "url-image": (rec(image="https://example.com/x.jpg"), "URL images cannot be fetched"),
        "path-escape": (rec(image="../../etc/passwd"), "outside data_dir"),
        "path-escape-to-real-image": (rec(image="../outside.jpg"), "outside data_dir"),
        "non-image-file": (rec(image="notes.jpg"), "cannot be decoded"),
        "nan-box": (rec(spans=[dict(span, points=[[float("nan"), 1], [5, 5]])]), "not finite"),
        "zero-area-box": (rec(spans=[dict(span, points=[[5, 5], [5, 50]])]), "zero area"),
        "box-outside-image": (rec(spans=[dict(span, points=[[500, 500], [600, 600]])]), "zero area"),
        "unknown-label": (rec(spans=[dict(span, label="raccoon")]), "label 'raccoon'"),
        "bad-answer": (rec(answer="maybe"), "answer must be one of"),
    }


@pytest.mark.parametrize("kind", [
    "malformed-json", "not-an-object", "no-image", "missing-image-file", "url-image", "path-escape",
    "path-escape-to-real-image", "non-image-file", "nan-box", "zero-area-box", "box-outside-image",
    "unknown-label", "bad-answer",
])
def test_each_kind_of_bad_line_is_set_aside_logged_with_file_and_line_and_the_rest_ingested(ws, kind):
    text, error = _bad_lines(ws)[kind]
    ws.append(ws.record(0), "", text, ws.record(2))  # the bad line is line 3 (line 2 is blank)
    with capture_logs() as logs:
        stats = ws.ingest()
    assert stats["accept"] == 2 and stats["set_aside"] == 1 and stats["invalid"] == 1
    (event,) = set_aside_events(logs)
    assert event["file"] == str(ws.export) and event["line"] == 3 and error in event["error"]
    assert event["log_level"] == "error"
    (item,) = ws.ledger.invalid_items(10)
    assert item["source"] == str(ws.export) and item["line"] == 3 and error in item["error"]
    assert item["excerpt"] == text[:300]
    assert ws.ledger.counts() == {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 1}


def test_a_line_that_is_not_utf8_is_set_aside(ws):
    ws.append(ws.record(0))
    with open(ws.export, "ab") as out:
        out.write(b'{"image": "\xff\xfe"}\n')
    with capture_logs() as logs:
        ws.ingest()
    (event,) = set_aside_events(logs)
    assert event["line"] == 2 and "not UTF-8" in event["error"]
    assert ws.ledger.counts()["accepted"] == 1


def test_rereading_bad_lines_does_not_duplicate_them_in_the_invalid_table(ws):
    ws.append("{broken", ws.record(0))
    ws.ingest()
    ws.ledger.forget_source(str(ws.export.absolute()))
    ws.ingest()
    assert ws.ledger.counts()["invalid"] == 1


def test_a_fixed_line_leaves_the_set_aside_list_when_a_fresh_db_out_replaces_the_file(ws):
    ws.append(ws.record(0), ws.record(1, spans=[{"label": "UNKNOWN", "points": [[1, 1], [5, 1], [5, 5], [1, 5]]}]))
    ws.ingest()
    assert ws.ledger.counts() == {"accepted": 1, "rejected": 0, "ignored": 0, "invalid": 1}
    fresh = ws.export.with_name("fresh.tmp")
    ws.append(ws.record(0), ws.record(1), "{still broken", path=fresh)  # line 2 fixed, line 3 bad
    os.replace(fresh, ws.export)
    stats = ws.ingest()
    assert stats["cleared"] == 1 and stats["inserted"] == 1
    assert ws.ledger.counts() == {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 1}
    assert [(i["line"], i["error"][:9]) for i in ws.ledger.invalid_items()] == [(3, "malformed")]


def test_a_line_fixed_in_place_is_picked_up_after_its_read_position_is_forgotten(ws):
    """What ``odal retry`` does: an edit past the first bytes is not noticed by itself; reading again finds it."""
    filler = [ws.record(0, timestamp=1000 + n) for n in range(40)]  # > HEAD_BYTES before the bad line
    good = json.dumps(ws.record(1))
    bad = good.replace('"answer": "accept"', '"answer": "acceptd"')
    ws.append(*filler, bad)
    ws.ingest()
    assert ws.ledger.counts()["invalid"] == 1
    text = ws.export.read_text()
    ws.export.write_text(text.replace(bad, good + " "))  # same length, same inode
    assert ws.ingest()["lines"] == 0  # unnoticed: nothing new
    ws.ledger.forget_all_sources()
    stats = ws.ingest()
    assert stats["cleared"] == 1 and stats["inserted"] == 1
    assert ws.ledger.counts() == {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 0}


def test_a_source_read_again_reuses_the_checked_image_of_lines_it_already_holds_unchanged(ws):
    """Re-reads (a fresh db-out, odal retry) do not decode every image again: unchanged lines keep their check."""
    ws.append(ws.record(0), ws.record(1))
    ws.ingest()
    ws.items[0].image.write_bytes(b"not a jpeg any more")  # a decode now would fail and set the line aside
    ws.ledger.forget_all_sources()
    stats = ws.ingest()
    assert (stats["lines"], stats["unchanged"], stats["set_aside"]) == (2, 2, 0)
    ws.ledger.forget_all_sources()
    ws.append(ws.record(0, timestamp=5000))  # a newer answer for that image: checked again, and set aside
    assert ws.ingest()["set_aside"] == 1


def _move_image_away(ws, index: int) -> tuple[Path, Path]:
    image = ws.items[index].image
    away = ws.root / "elsewhere" / image.name
    away.parent.mkdir(exist_ok=True)
    image.rename(away)
    return image, away


def test_an_accept_whose_image_arrives_later_is_ingested_when_it_appears(ws):
    records = [ws.record(0), ws.record(1)]
    image, away = _move_image_away(ws, 1)
    ws.append(*records)
    with capture_logs() as logs:
        ws.ingest()
    [event] = set_aside_events(logs)
    assert event["line"] == 2 and event["waits_for"] == str(image.resolve())
    assert retry_waiting(image, ws.ledger, LABELS, ws.data, ws.blobs)["retried"] == 1  # still missing
    assert ws.ledger.counts()["invalid"] == 1 and ws.ledger.counts()["accepted"] == 1
    away.rename(image)
    stats = retry_waiting(image, ws.ledger, LABELS, ws.data, ws.blobs)
    assert (stats["retried"], stats["inserted"], stats["cleared"]) == (1, 1, 1)
    assert ws.ledger.counts() == {"accepted": 2, "rejected": 0, "ignored": 0, "invalid": 0}
    [row] = [r for r in ws.ledger.accepted() if r["image_path"] == str(image.resolve())]
    assert row["boxes"]  # the line's boxes, as if it had been read with its image there


def test_an_image_still_being_copied_is_retried_and_its_new_error_replaces_the_old_one(ws):
    record = ws.record(2)
    image, away = _move_image_away(ws, 2)
    image.write_bytes(away.read_bytes()[:200])  # the copy has only begun
    ws.append(record)
    ws.ingest()
    [item] = ws.ledger.invalid_items()
    assert "cannot be decoded" in item["error"] and item["image"] == str(image.resolve())
    image.write_bytes(b"")  # rewritten from the start
    retry_waiting(image, ws.ledger, LABELS, ws.data, ws.blobs)
    [item] = ws.ledger.invalid_items()
    assert "empty" in item["error"]
    image.write_bytes(away.read_bytes())  # done
    retry_waiting(image, ws.ledger, LABELS, ws.data, ws.blobs)
    assert ws.ledger.counts() == {"accepted": 1, "rejected": 0, "ignored": 0, "invalid": 0}


def test_a_retried_line_does_not_override_a_newer_answer_read_meanwhile(ws):
    first, later = ws.record(1, timestamp=1000), ws.record(1, answer="reject", timestamp=2000)
    image, away = _move_image_away(ws, 1)
    ws.append(first)
    ws.ingest()
    other = ws.export.with_name("later-session.jsonl")
    ws.append(later, path=other)  # the annotator changed their mind, in another export
    ws.ingest(other)
    away.rename(image)
    stats = retry_waiting(image, ws.ledger, LABELS, ws.data, ws.blobs)
    assert stats["stale"] == 1 and ws.ledger.counts()["rejected"] == 1 and ws.ledger.counts()["accepted"] == 0


def test_lines_that_cannot_get_better_by_an_image_arriving_do_not_wait(ws):
    ws.append(ws.record(0, image="https://example.com/a.jpg"), ws.record(1, path="../../etc/passwd",
                                                                           image="../../etc/passwd"))
    ws.ingest()
    assert ws.ledger.counts()["invalid"] == 2
    assert [i["image"] for i in ws.ledger.invalid_items()] == [None, None]


def test_a_reject_whose_image_is_gone_is_still_recorded_as_seen(ws):
    obj = ws.record(0, "reject", image="gone.jpg", path="gone.jpg", meta={"file": "gone.jpg"})
    ws.append(obj)
    with capture_logs() as logs:
        stats = ws.ingest()
    assert stats["set_aside"] == 0 and ws.ledger.counts()["rejected"] == 1
    assert [e["event"] for e in logs] == ["image_unavailable"]


def test_an_image_whose_aspect_differs_from_the_record_is_ingested_with_a_warning(ws):
    ws.append(ws.record(0, width=ws.items[0].width, height=ws.items[0].width))
    with capture_logs() as logs:
        ws.ingest()
    assert ws.ledger.counts()["accepted"] == 1
    assert [e["event"] for e in logs] == ["image_size_mismatch"]


# ------------------------------------------------------------------------------------ incremental reads


def test_appended_lines_are_picked_up_on_the_next_call(ws):
    ws.append(ws.record(0), ws.record(1))
    assert ws.ingest()["lines"] == 2
    ws.append(ws.record(2), ws.record(3))
    stats = ws.ingest()
    assert stats["lines"] == 2 and stats["inserted"] == 2 and not stats["rewritten"]
    assert ws.ledger.counts()["accepted"] == 4


def test_a_partial_last_line_waits_until_it_is_complete(ws):
    ws.append(ws.record(0))
    text = json.dumps(ws.record(1))
    with open(ws.export, "a") as out:
        out.write(text[:40])
    with capture_logs() as logs:
        assert ws.ingest()["lines"] == 1
    assert not set_aside_events(logs) and ws.ledger.counts()["accepted"] == 1
    with open(ws.export, "a") as out:
        out.write(text[40:] + "\n")
    stats = ws.ingest()
    assert stats["lines"] == 1 and stats["inserted"] == 1 and ws.ledger.counts()["invalid"] == 0


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(ws):
    ws.append("", ws.record(0), "   ", "", "{bad")
    with capture_logs() as logs:
        stats = ws.ingest()
    assert stats["lines"] == 2 and set_aside_events(logs)[0]["line"] == 5


def test_a_truncated_and_rewritten_file_is_read_again_from_the_start(ws):
    ws.append(ws.record(0), ws.record(1), ws.record(2))
    ws.ingest()
    ws.export.write_text(json.dumps(ws.record(3)) + "\n")  # same inode, shorter than the stored offset
    with capture_logs() as logs:
        stats = ws.ingest()
    assert stats["rewritten"] and stats["lines"] == 1 and stats["inserted"] == 1
    assert "export_rewritten" in [e["event"] for e in logs]
    assert ws.ledger.counts()["accepted"] == 4


def test_a_file_replaced_by_a_fresh_db_out_is_reread_and_only_new_records_count(ws):
    ws.append(ws.record(0), ws.record(1))
    ws.ingest()
    fresh = ws.export.with_name("fresh.tmp")
    ws.append(ws.record(0), ws.record(1), ws.record(2), path=fresh)
    os.replace(fresh, ws.export)  # a new inode
    stats = ws.ingest()
    assert stats["rewritten"] and stats["lines"] == 3
    assert (stats["unchanged"], stats["inserted"]) == (2, 1)


def test_a_file_rewritten_in_place_with_different_first_bytes_is_reread(ws):
    ws.append(ws.record(0))
    ws.ingest()
    with open(ws.export, "r+") as out:  # same inode, longer than before, but a different beginning
        out.write("\n".join(json.dumps(ws.record(i, timestamp=5000)) for i in (1, 2, 0)) + "\n")
    stats = ws.ingest()
    assert stats["rewritten"] and stats["lines"] == 3 and stats["inserted"] == 2 and stats["updated"] == 1


def test_a_file_with_more_lines_than_one_chunk_is_read_completely(ws):
    """Reading commits every CHUNK_LINES lines; all lines arrive and the stored offset is the file's end."""
    lines = [ws.record(i % 4, _input_hash=i, timestamp=1000) for i in range(CHUNK_LINES * 2 + 7)]
    ws.append(*lines)
    stats = ws.ingest()
    assert stats["inserted"] == len(lines) and ws.ledger.counts()["accepted"] == len(lines)
    assert ws.ledger.source_state(str(ws.export.absolute()))["offset"] == ws.export.stat().st_size


def test_a_reader_killed_mid_file_loses_nothing_and_counts_nothing_twice(ws):
    """SIGKILL a real ingesting process part-way; reading again yields every record exactly once."""
    lines = [ws.record(i % 4, _input_hash=i, timestamp=1000) for i in range(CHUNK_LINES * 6)]
    ws.append(*lines)
    ws.ledger.close()
    code = ("import sys; from pathlib import Path; from odal.daemon.store.ledger import Ledger; "
            "from odal.daemon.handlers.ingest import ingest_export_file; "
            "ingest_export_file(Path(sys.argv[1]), Ledger(Path(sys.argv[2])), sys.argv[3].split(','), "
            "Path(sys.argv[4]), Path(sys.argv[5]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws.export), str(ws.ledger_path), ",".join(LABELS),
                             str(ws.data), str(ws.blobs)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(ws.ledger_path, timeout=5) as probe:
                    if probe.execute("SELECT COUNT(*) FROM sources").fetchone()[0]:
                        break  # at least one chunk is committed
            except sqlite3.OperationalError:
                pass
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait()
    ws.ledger = Ledger(ws.ledger_path)
    committed = ws.ledger.counts()["accepted"]
    assert committed % CHUNK_LINES == 0  # whole chunks only, each with its read position
    stats = ws.ingest()
    assert stats["inserted"] == len(lines) - committed
    assert ws.ledger.counts()["accepted"] == len(lines) == ws.ledger.max_seq()


def test_a_missing_export_file_is_a_warning_not_a_crash(ws):
    with capture_logs() as logs:
        stats = ws.ingest(ws.root / "nope.jsonl")
    assert stats["lines"] == 0 and logs[0]["event"] == "export_missing"


def test_a_utf8_bom_at_the_start_of_the_file_is_ignored(ws):
    ws.export.write_bytes(b"\xef\xbb\xbf" + json.dumps(ws.record(0)).encode() + b"\n")
    assert ws.ingest()["inserted"] == 1


# ------------------------------------------------------------------------------------------- data URIs


def test_a_data_uri_image_is_decoded_once_into_the_blob_dir(ws):
    uri = "data:image/jpeg;base64," + base64.b64encode(ws.items[0].image.read_bytes()).decode()
    ws.append(ws.record(0, image=uri, path=None), ws.record(0, image=uri, path=None, _input_hash=42))
    ws.ingest()
    ws.ledger.forget_source(str(ws.export.absolute()))
    ws.ingest()
    blobs = list(ws.blobs.iterdir())
    assert len(blobs) == 1 and blobs[0].suffix == ".jpg"
    assert blobs[0].read_bytes() == ws.items[0].image.read_bytes()
    assert {a["image_path"] for a in ws.ledger.accepted()} == {str(blobs[0])}


# ------------------------------------------------------------------------------------------- folders


def test_the_daemons_full_read_takes_jsonl_and_json_lines_files_and_sets_aside_a_json_array(ws):
    """What the daemon reads at start, on reload and on retry (export_files, then each file as an export)."""
    folder = ws.export.parent
    ws.append(ws.record(0), path=folder / "a.jsonl")
    ws.append(ws.record(1), path=folder / "b.json")
    (folder / "c.json").write_text(json.dumps([ws.record(2)]) + "\n")
    ws.append(ws.record(3), path=folder / ".a.jsonl.x.tmp")
    ws.append(ws.record(3), path=folder / "notes.txt")
    files = export_files(folder)
    assert [p.name for p in files if p != ws.export] == ["a.jsonl", "b.json", "c.json"]
    stats = [ingest_export_file(path, ws.ledger, LABELS, ws.data, ws.blobs) for path in files]
    assert sum(s["inserted"] for s in stats) == 2
    assert [i["source"] for i in ws.ledger.invalid_items(10)] == [str(folder / "c.json")]  # one line: an array
    assert sum(ingest_export_file(p, ws.ledger, LABELS, ws.data, ws.blobs)["lines"] for p in files) == 0


# ----------------------------------------------------------------------------------------- the process


def test_ingest_modules_do_not_import_tensorflow():
    code = ("import sys, odal.daemon.handlers.ingest, odal.daemon.handlers.ingest_db, odal.daemon.store.ledger, "
            "odal.daemon.sources.prodigy_format; sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
