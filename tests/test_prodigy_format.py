"""Prodigy records as odal values: parsing, boxes, image resolution and the label map parser."""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from odal.daemon.sources import datasets
from odal.common.errors import ConfigError, InvalidRecord
from odal.daemon.sources.label_map import load_label_map
from odal.daemon.sources.prodigy_format import Annotation, Box, open_image, parse_record

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "prodigy" / "db-out-image-manual.jsonl"
FIXTURE_LABELS = ("CONTENT", "REDACTION")


def fixture_record() -> dict:
    return json.loads(FIXTURE.read_text().splitlines()[0])


def record(spans=(), answer="accept", **extra) -> dict:
    obj = {"image": "a.jpg", "meta": {"file": "a.jpg"}, "_input_hash": 7, "_task_hash": 8, "width": 200,
           "height": 100, "spans": list(spans), "answer": answer, "_timestamp": 10}
    obj.update(extra)
    return obj


def rect(label, x0, y0, x1, y1) -> dict:
    return {"label": label, "type": "rect", "points": [[x0, y0], [x0, y1], [x1, y1], [x1, y0]]}


def annotation(image_ref: str, meta_file: str | None = None) -> Annotation:
    return Annotation("1", None, 0.0, "accept", image_ref, None, None, (), meta_file, None)


def save_image(path: Path, size=(40, 30), fmt="PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------------------------ records


def test_real_fixture_record_parses_unchanged_into_three_normalised_boxes():
    ann = parse_record(fixture_record(), FIXTURE_LABELS)
    assert (ann.input_hash, ann.task_hash, ann.answer, ann.timestamp) == ("1413334570", "1588323116", "accept",
                                                                         1638214078.0)
    assert ann.image_ref == "sample/path/redacted/04-F-0269_Global_Screening_Guidance-03.jpg"
    assert ann.meta_file == "04-F-0269_Global_Screening_Guidance-03.jpg"
    assert (ann.width, ann.height) == (800, 1035)
    assert [b.label for b in ann.boxes] == ["CONTENT", "REDACTION", "REDACTION"]
    content = ann.boxes[0]
    assert content.xmin == pytest.approx(76.5 / 800) and content.xmax == pytest.approx(664.1 / 800)
    assert content.ymin == pytest.approx(112.5 / 1035) and content.ymax == pytest.approx(898.6 / 1035)


def test_polygon_and_freehand_boxes_are_min_max_over_points():
    spans = [{"label": "a", "type": "polygon", "points": [[20, 10], [100, 50], [60, 90]]},
             {"label": "a", "type": "freehand", "points": [[10, 20], [30, 5], [50, 25], [40, 60]]}]
    ann = parse_record(record(spans), {"a"})
    assert ann.boxes[0] == Box("a", 0.1, 0.1, 0.5, 0.9)
    assert ann.boxes[1] == Box("a", 0.05, 0.05, 0.25, 0.6)


def test_box_partly_outside_the_image_is_clipped():
    ann = parse_record(record([rect("a", -20, -5, 250, 50)]), {"a"})
    assert ann.boxes == (Box("a", 0.0, 0.0, 1.0, 0.5),)


def test_accept_without_spans_is_a_valid_image_without_objects():
    assert parse_record(record([]), {"a"}).boxes == ()


def test_missing_timestamp_counts_as_zero_and_input_hash_is_kept_as_string():
    obj = record()
    del obj["_timestamp"], obj["_task_hash"]
    ann = parse_record(obj, {"a"})
    assert (ann.timestamp, ann.input_hash, ann.task_hash) == (0.0, "7", None)


def test_annotator_comes_from_annotator_id_or_session_id():
    assert parse_record(record(_annotator_id="ds-alice"), {"a"}).annotator == "ds-alice"
    assert parse_record(record(_session_id="ds-bob"), {"a"}).annotator == "ds-bob"


def test_reject_spans_are_not_boxes_and_need_no_size():
    obj = record([rect("unknown", 0, 0, 10, 10)], answer="reject")
    del obj["width"], obj["height"]
    ann = parse_record(obj, {"a"})
    assert (ann.answer, ann.boxes, ann.width) == ("reject", (), None)


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.update(spans=[{"label": "a", "points": [[0, 0], [math.nan, 5]]}]), "span 0 (label 'a')"),
    (lambda o: o.update(spans=[{"label": "a", "points": [[0, 0], [math.inf, 5]]}]), "not finite"),
    (lambda o: o.update(spans=[{"label": "a", "type": "rect"}]), "has no points"),
    (lambda o: o.update(spans=[{"label": "a", "points": []}]), "has no points"),
    (lambda o: o.update(spans=[{"label": "a", "points": [[0, 0], ["x", 1]]}]), "not an [x, y] pair"),
    (lambda o: o.update(spans=[rect("a", 300, 10, 400, 20)]), "zero area"),
    (lambda o: o.update(spans=[rect("a", 10, 10, 10, 50)]), "zero area"),
    (lambda o: o.update(spans=[rect("a", 0, 0, 5, 5), rect("cat", 0, 0, 5, 5)]), "span 1 (label 'cat')"),
    (lambda o: o.update(answer="maybe"), "answer must be one of"),
    (lambda o: o.pop("answer"), "answer must be one of"),
    (lambda o: o.pop("_input_hash"), "_input_hash is missing"),
    (lambda o: o.update(_input_hash="abc"), "_input_hash must be an integer"),
    (lambda o: o.update(_input_hash=True), "_input_hash must be an integer"),
    (lambda o: o.update(_timestamp="yesterday"), "_timestamp"),
    (lambda o: [o.pop(k) for k in ("image", "meta")], "no image"),
    (lambda o: o.update(image=5), "image must be a string"),
    (lambda o: o.update(spans=[rect("a", 0, 0, 5, 5)], width=0), "width must be a number > 0"),
    (lambda o: (o.update(spans=[rect("a", 0, 0, 5, 5)]), o.pop("height")), "needs width and height"),
    (lambda o: o.update(spans="nope"), "spans must be a list"),
], ids=["nan", "inf", "no-points-key", "empty-points", "non-numeric-point", "outside", "degenerate",
        "unknown-label", "bad-answer", "no-answer", "no-input-hash", "text-input-hash", "bool-input-hash",
        "bad-timestamp", "no-image", "image-not-string", "zero-width", "no-height", "spans-not-list"])
def test_invalid_records_raise_invalid_record_naming_the_problem(mutate, message):
    obj = record([rect("a", 10, 10, 50, 50)])
    mutate(obj)
    with pytest.raises(InvalidRecord, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_record(obj, {"a"})


def test_non_object_record_is_invalid():
    with pytest.raises(InvalidRecord, match="not a JSON object"):
        parse_record([1, 2], {"a"})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- images


def test_relative_and_absolute_paths_inside_data_dir_resolve_with_real_size(tmp_path):
    data = tmp_path / "data"
    image = save_image(data / "sub" / "x.png", size=(64, 48))
    found = open_image(annotation("sub/x.png"), data, tmp_path / "blobs")
    assert (found.path, found.width, found.height) == (image.resolve(), 64, 48)
    assert open_image(annotation(str(image)), data, tmp_path / "blobs").path == image.resolve()


def test_meta_file_is_the_fallback_when_the_image_path_does_not_exist(tmp_path):
    data = tmp_path / "data"
    image = save_image(data / "x.png")
    assert open_image(annotation("elsewhere/x.png", meta_file="x.png"), data, tmp_path).path == image.resolve()


def test_path_escaping_data_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    save_image(tmp_path / "outside.png")
    for ref in ("../../etc/passwd", "../outside.png", str(tmp_path / "outside.png")):
        with pytest.raises(InvalidRecord, match="outside data_dir"):
            open_image(annotation(ref), data, tmp_path / "blobs")


def test_symlink_resolving_outside_data_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(save_image(tmp_path / "outside.png"), data / "link.png")
    with pytest.raises(InvalidRecord, match="outside data_dir"):
        open_image(annotation("link.png"), data, tmp_path / "blobs")


def test_symlink_loop_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(data / "b.png", data / "a.png")
    os.symlink(data / "a.png", data / "b.png")
    with pytest.raises(InvalidRecord):
        open_image(annotation("a.png"), data, tmp_path / "blobs")


def test_missing_image_file_is_invalid(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(InvalidRecord, match="image file not found: nope.jpg"):
        open_image(annotation("nope.jpg", meta_file="nope.jpg"), tmp_path / "data", tmp_path)


def test_url_images_are_refused(tmp_path):
    for url in ("http://example.com/a.jpg", "https://example.com/a.jpg"):
        with pytest.raises(InvalidRecord, match="URL images cannot be fetched: " + url):
            open_image(annotation(url), tmp_path, tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"not an image at all", "cannot be decoded"),
], ids=["zero-size", "text"])
def test_non_image_files_are_invalid(tmp_path, content, message):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(InvalidRecord, match=message):
        open_image(annotation("x.jpg"), tmp_path, tmp_path / "blobs")


def test_a_folder_is_not_an_image(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(InvalidRecord, match="not a file"):
        open_image(annotation("x.jpg"), tmp_path, tmp_path / "blobs")


def test_gigantic_image_over_100_megapixels_is_refused(tmp_path):
    Image.new("1", (10_050, 10_000)).save(tmp_path / "huge.png")
    with pytest.raises(InvalidRecord, match="too large"):
        open_image(annotation("huge.png"), tmp_path, tmp_path / "blobs")


def test_data_uri_is_decoded_and_stored_once_by_content_hash(tmp_path):
    png = save_image(tmp_path / "src.png", size=(20, 10))
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    blobs = tmp_path / "blobs"
    first = open_image(annotation(uri), tmp_path / "nodata", blobs)
    second = open_image(annotation(uri), tmp_path / "nodata", blobs)
    assert first.path == second.path and (first.width, first.height) == (20, 10)
    assert first.path.parent == blobs and first.path.suffix == ".png" and len(first.path.stem) == 64
    assert [p.name for p in blobs.iterdir()] == [first.path.name]  # one file, no temp files left
    assert first.path.read_bytes() == png.read_bytes()


@pytest.mark.parametrize("uri, message", [
    ("data:image/png;base64,@@@notbase64", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"garbage").decode(), "cannot be decoded"),
    ("data:text/plain;base64,aGVsbG8=", "unsupported data URI"),
], ids=["bad-base64", "not-an-image", "not-image-mime"])
def test_bad_data_uris_are_invalid_and_store_nothing(tmp_path, uri, message):
    with pytest.raises(InvalidRecord, match=message):
        open_image(annotation(uri), tmp_path, tmp_path / "blobs")
    assert not (tmp_path / "blobs").exists()


# ---------------------------------------------------------------------------------------------- label map


def test_label_map_written_by_datasets_reads_back_in_id_order(tmp_path):
    datasets.write_label_map(tmp_path / "lm.pbtxt", ["square", "disc", "traffic light"])
    assert load_label_map(tmp_path / "lm.pbtxt") == ["square", "disc", "traffic light"]


def test_label_map_parser_handles_comments_display_names_nesting_and_any_id_order(tmp_path):
    (tmp_path / "lm.pbtxt").write_text(
        "# OD API label map\n"
        "item {\n  id: 2\n  name: 'REDACTION'  # trailing comment\n  display_name: \"Redaction \\\"box\\\"\"\n}\n"
        "item: { name: \"CONTENT\" id: 1 keypoints { id: 0 label: \"corner\" } frequency: FREQUENT }\n")
    assert load_label_map(tmp_path / "lm.pbtxt") == ["CONTENT", "REDACTION"]


@pytest.mark.parametrize("text, message", [
    ("item { id: 1 name: 'a' }\nitem { id: 3 name: 'b' }\n", "ids must be 1..2"),
    ("item { id: 0 name: 'background' }\nitem { id: 1 name: 'a' }\n", "ids must be 1..2"),
    ("item { id: 1 name: 'a' }\nitem { id: 1 name: 'b' }\n", "id 1 is used twice"),
    ("item { id: 1 name: 'a' }\nitem { id: 2 name: 'a' }\n", "name 'a' is used twice"),
    ("item { id: 1 display_name: 'a' }\n", "item id 1 has no name"),
    ("item { name: 'a' }\n", "no integer id"),
    ("item { id: 1 name: 'a' \n", "not closed"),
    ("", "has no items"),
], ids=["gap", "zero", "dup-id", "dup-name", "no-name", "no-id", "unclosed", "empty"])
def test_bad_label_maps_raise_config_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "lm.pbtxt").write_text(text)
    with pytest.raises(ConfigError, match=f"lm.pbtxt.*{message}"):
        load_label_map(tmp_path / "lm.pbtxt")


def test_missing_label_map_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_label_map(tmp_path / "nope.pbtxt")


def test_a_file_name_with_a_colon_is_a_path_but_other_uri_schemes_are_refused(tmp_path):
    image = save_image(tmp_path / "photo:1.png")
    assert open_image(annotation("photo:1.png"), tmp_path, tmp_path / "blobs").path == image.resolve()
    with pytest.raises(InvalidRecord, match="unsupported image reference"):
        open_image(annotation("ftp://example.com/a.png"), tmp_path, tmp_path / "blobs")
