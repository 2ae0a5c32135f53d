"""The recipe's pure parts: spans in pixels, stored paths, hashes, before_db, uncertainty, ordering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odal.daemon.sources import datasets
from odal.common.errors import ConfigError
from odal.common.uncertainty import uncertainty
from odal.recipe.stream import StreamOptions, list_images, ordered_paths
from odal.common.hashing import content_hash
from odal.recipe.tasks import (add_detections, before_db, make_task, own_hashes, read_image,
                               stored_path)
from odal.recipe.workspace import select_labels
from odal.serving.client import Detections


def _detections(boxes, scores, classes, version=3) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int32),
                      np.array(scores, np.float32), len(scores), version)


@pytest.fixture
def image(tmp_path):
    return read_image(datasets.generate_shapes(tmp_path / "data", 1, seed=3)[0].image)


def test_spans_are_pixel_rects_with_points_clockwise_from_top_left(image):
    found = _detections([[0.25, 0.5, 0.75, 1.2]], [0.9], [2])
    task = add_detections(make_task(image, image.path.parent), found, ["square", "disc"], 0.3)
    (span,) = task["spans"]
    w, h = image.width, image.height
    assert span["label"] == "disc" and span["type"] == "rect"
    assert span["x"] == pytest.approx(0.5 * w) and span["y"] == pytest.approx(0.25 * h)
    assert span["width"] == pytest.approx(0.5 * w) and span["height"] == pytest.approx(0.5 * h)  # clipped at 1
    x0, y0, x1, y1 = 0.5 * w, 0.25 * h, w, 0.75 * h
    np.testing.assert_allclose(span["points"], [[x0, y0], [x0, y1], [x1, y1], [x1, y0]])
    assert task["meta"]["model_version"] == 3 and task["meta"]["scores"] == [pytest.approx(0.9)]


def test_threshold_and_unknown_classes_drop_boxes_but_uncertainty_counts_all(image):
    found = _detections([[0, 0, 0.5, 0.5]] * 3, [0.9, 0.5, 0.2], [1, 7, 1])
    task = add_detections(make_task(image, None), found, ["square"], 0.3)
    assert [s["label"] for s in task["spans"]] == ["square"]  # 0.5 has class 7, 0.2 is under the threshold
    assert task["meta"]["uncertainty"] == pytest.approx(1.0)


def test_uncertainty_is_highest_for_the_least_confident_detection_above_the_floor():
    assert uncertainty([]) == 0.0
    assert uncertainty([0.01, 0.02]) == 0.0  # all below the floor
    assert uncertainty([0.99, 0.5]) == pytest.approx(1.0)
    assert uncertainty([0.9, 0.7]) == pytest.approx(0.6)
    assert uncertainty([0.1]) == pytest.approx(0.2)


def test_stored_path_is_relative_inside_the_data_dir_and_absolute_outside(tmp_path):
    inside = tmp_path / "data" / "sub" / "a.jpg"
    assert stored_path(inside, tmp_path / "data") == "sub/a.jpg"
    assert stored_path(inside, tmp_path / "other") == str(inside.resolve())
    assert stored_path(inside, None) == str(inside.resolve())


def test_before_db_replaces_the_data_uri_by_the_path_and_keeps_the_rest(image):
    task = own_hashes(make_task(image, image.path.parent), image.data)
    assert task["image"].startswith("data:image/jpeg;base64,")
    (saved,) = before_db([{**task, "answer": "accept"}])
    assert saved["image"] == image.path.name and saved["answer"] == "accept"
    assert saved["_input_hash"] == task["_input_hash"] and task["image"].startswith("data:")  # input untouched


def test_input_hash_depends_on_the_bytes_only_and_matches_the_demo_annotator(image, tmp_path):
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(image.data)
    a = own_hashes(make_task(image, None), image.data)
    b = own_hashes(make_task(read_image(copy), None), image.data)
    assert a["_input_hash"] == b["_input_hash"] == content_hash(image.data) == datasets.input_hash(image.path)


def test_task_hash_changes_with_the_spans(image):
    plain = own_hashes(make_task(image, None), image.data)
    found = _detections([[0, 0, 0.5, 0.5]], [0.9], [1])
    boxed = own_hashes(add_detections(make_task(image, None), found, ["square"], 0.3), image.data)
    assert plain["_input_hash"] == boxed["_input_hash"] and plain["_task_hash"] != boxed["_task_hash"]


def test_orders_file_random_and_queue_first(tmp_path):
    files = [tmp_path / f"{n}.jpg" for n in "abcd"]
    assert ordered_paths(files, "file") == files
    shuffled = ordered_paths(files, "random", seed=1)
    assert sorted(shuffled) == files and shuffled == ordered_paths(files, "random", seed=1)
    ranked = [{"path": str(files[2]), "uncertainty": 0.9, "scored_version": 2},
              {"path": str(files[3]), "uncertainty": 0.8, "scored_version": 1},  # stale: older version
              {"path": str(tmp_path / "elsewhere.jpg"), "uncertainty": 0.7, "scored_version": 2}]
    assert ordered_paths(files, "uncertainty", ranked=ranked) == [files[2], files[0], files[1], files[3]]


def test_list_images_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    for name in ("b.jpg", "a.PNG", "sub/c.jpeg", ".hidden.jpg", ".cache/d.jpg", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path.resolve()).as_posix() for p in list_images(tmp_path)] == \
        ["a.PNG", "b.jpg", "sub/c.jpeg"]


@pytest.mark.parametrize("bad", [dict(order="best"), dict(threshold=1.5), dict(labels=()), dict(batch_size=0),
                                 dict(shown=("b",))])
def test_stream_options_are_validated_once_when_built(tmp_path, bad):
    with pytest.raises(ValueError):
        StreamOptions(**{"source": tmp_path, "labels": ("a",), **bad})


def test_a_missing_source_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        StreamOptions(source=Path(tmp_path / "nope"), labels=("a",))


NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters=","), min_size=1,
                max_size=8).map(str.strip).filter(bool)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label_map=st.lists(NAMES, min_size=1, max_size=6, unique=True), data=st.data())
def test_any_label_option_keeps_class_k_named_as_the_label_maps_item_k(image, label_map, data):
    """Fuzzed --label values (any subset, any order, repeats, spaces, lists or comma strings) never rename a class:
    class k is the label map's item k or is not shown; a name outside the map is refused, naming the map."""
    chosen = data.draw(st.lists(st.sampled_from(label_map), max_size=8))
    spaced = [data.draw(st.sampled_from(["", " ", "  "])) + name for name in chosen]
    requested = data.draw(st.sampled_from([",".join(spaced), spaced, None]))
    shown = select_labels(label_map, requested, Path("label_map.pbtxt"))
    assert shown == (tuple(n for n in label_map if n in set(chosen)) if chosen and requested is not None
                     else tuple(label_map))  # no --label (or an empty one): every label
    classes = list(range(1, len(label_map) + 1))
    found = _detections([[0.1, 0.1, 0.6, 0.6]] * len(classes), [0.9] * len(classes), classes)
    task = add_detections(make_task(image, None), found, label_map, 0.3, shown)
    assert [span["label"] for span in task["spans"]] == [n for n in label_map if n in shown]
    stranger = data.draw(NAMES.filter(lambda n: n not in label_map))
    with pytest.raises(ConfigError, match=r"not in the label map label_map\.pbtxt"):
        select_labels(label_map, chosen + [stranger], Path("label_map.pbtxt"))
