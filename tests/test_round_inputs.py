"""What a round trains on: the accepted annotations whose image is still there, split stably into train and eval."""

from __future__ import annotations

import json

from PIL import Image

from odal.daemon.rounds.inputs import split_of, with_images, write_annotations


def _annotation(tmp_path, name: str, exists: bool = True) -> dict:
    path = tmp_path / name
    if exists:
        Image.new("RGB", (8, 6)).save(path, format="JPEG")
    return {"input_hash": name, "image_path": str(path),
            "boxes": [{"label": "disc", "xmin": 0.1, "ymin": 0.1, "xmax": 0.5, "ymax": 0.5}]}


def test_annotations_whose_image_was_deleted_are_left_out_and_named(tmp_path):
    kept, gone = _annotation(tmp_path, "a.jpg"), _annotation(tmp_path, "b.jpg", exists=False)
    no_path = dict(_annotation(tmp_path, "c.jpg"), image_path=None)
    present, missing = with_images([kept, gone, no_path], [tmp_path])
    assert present == [kept] and missing == [gone["image_path"], "None"]


def test_the_split_is_stable_and_small_data_keeps_one_image_on_each_side(tmp_path):
    accepted = [_annotation(tmp_path, f"{n}.jpg") for n in range(3)]
    out = tmp_path / "annotations.jsonl"
    counts = write_annotations(out, accepted, ["square", "disc"], eval_fraction=0.01)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts == {"train": 2, "eval": 1} and sorted(line["split"] for line in lines) == ["eval", "train", "train"]
    assert all(box["label_id"] == 2 for line in lines for box in line["boxes"])
    assert 5 < [split_of(str(n), 0.3) for n in range(200)].count("eval") < 100
