"""``odal demo --images DIR`` takes the common PASCAL VOC layouts (symlinked folders too), skips an image that does
not decode with a message naming it, and ends with the table of rounds whatever happened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon_harness import odal_cli
from odal.daemon.sources import datasets, voc


def _voc_folder(root: Path, annotations: str, images: str, link_images: bool = False, link_annotations: bool = False,
                broken: bool = True, count: int = 4) -> Path:
    """A VOC folder of ``count`` generated images (``annotations``/NAME.xml + ``images``/NAME.jpg), the image
    (and annotation) folders symlinks to folders elsewhere when asked, and one more image that does not decode."""
    real = root / "elsewhere"
    items = datasets.generate_shapes(real / "images", count, seed=3)
    if broken:
        broken_image = real / "images" / "broken.jpg"
        broken_image.write_bytes(items[0].image.read_bytes()[:300])  # a JPEG cut short
        items.append(datasets.GroundTruth(broken_image, items[0].width, items[0].height, items[0].boxes))
    (real / "xml").mkdir()
    for item in items:
        objects = "".join(f"<object><name>{label}</name><bndbox><xmin>{x0:.0f}</xmin><ymin>{y0:.0f}</ymin>"
                          f"<xmax>{x1:.0f}</xmax><ymax>{y1:.0f}</ymax></bndbox></object>"
                          for label, x0, y0, x1, y1 in item.boxes)
        (real / "xml" / f"{item.image.stem}.xml").write_text(
            f"<annotation><filename>{item.image.name}</filename><size><width>{item.width}</width>"
            f"<height>{item.height}</height><depth>3</depth></size>{objects}</annotation>")
    folder = root / "voc"
    folder.mkdir()
    for name, source, link in ((images, real / "images", link_images), (annotations, real / "xml", link_annotations)):
        if link:
            os.symlink(source, folder / name)
        else:
            os.rename(source, folder / name)
    return folder


LAYOUTS = [("Annotations", "JPEGImages", False, False), ("annotations", "images", True, False),
           ("annots", "images", False, True), ("annots", "imgs", True, True)]


@pytest.mark.parametrize("annotations, images, link_images, link_annotations", LAYOUTS)
def test_common_voc_layouts_are_read_and_a_broken_image_is_skipped_by_name(tmp_path, annotations, images,
                                                                           link_images, link_annotations):
    folder = _voc_folder(tmp_path, annotations, images, link_images, link_annotations)
    found = voc.read(folder)
    assert len(found.items) == 4
    assert found.data_dir == (tmp_path / "elsewhere" / "images").resolve() if link_images else \
        (folder / images).resolve()
    for item in found.items:  # what the demo writes into the records: a path inside the data dir
        assert (found.data_dir / item.image.relative_to(found.data_dir)).is_file()
    assert len(found.skipped) == 1 and found.skipped[0].startswith("broken.xml: skipped: its image broken.jpg "
                                                                   "cannot be decoded")


def test_a_folder_without_voc_annotations_is_refused_naming_the_layouts(tmp_path):
    (tmp_path / "voc" / "images").mkdir(parents=True)
    proc = odal_cli("demo", "--workspace", str(tmp_path / "ws"), "--images", str(tmp_path / "voc"), "--no-serve",
                    "--model", "tiny")
    assert proc.returncode == 2, proc.stderr
    assert "no PASCAL VOC annotations found" in proc.stderr and "annots/" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("annotations, images, link_images, link_annotations", LAYOUTS[1:3])
def test_demo_reads_the_layout_says_what_it_skipped_and_prints_the_table_when_the_daemon_stops(
        tmp_path, annotations, images, link_images, link_annotations):
    # --steps -1: the daemon refuses the workspace's config at start, the quickest way a demo can go wrong.
    folder = _voc_folder(tmp_path, annotations, images, link_images, link_annotations)
    proc = odal_cli("demo", "--workspace", str(tmp_path / "ws"), "--images", str(folder), "--no-serve",
                    "--model", "tiny", "--rounds", "1", "--per-round", "4", "--steps", "-1")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "workspace" in proc.stdout and ": 4 images" in proc.stdout, proc.stdout
    assert "broken.jpg cannot be decoded" in proc.stderr
    assert "the daemon exited with 2" in proc.stderr
    assert "no round ran" in proc.stdout  # the table's place: said, not a sqlite3 traceback
    assert proc.returncode == 1


_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol">'
           + "".join(f'<!ENTITY l{i} "{("&l;" if i == 0 else f"&l{i - 1};") * 10}">' for i in range(9))
           + ']><annotation><filename>&l8;</filename></annotation>')


def test_hostile_annotation_files_are_skipped_one_message_each_and_the_good_ones_read(tmp_path):
    """Fuzzed with hypothesis: whatever an XML file holds (garbage, deep nesting, entity bombs, wrong numbers, paths
    leading out of the image folder), voc.read returns the good items and one message per bad file (60 examples in
    make test; ODAL_FUZZ_VOC_EXAMPLES=5000 for a long run)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = _voc_folder(tmp_path, "annots", "images", broken=False, count=2)
    fragment = st.sampled_from(["<annotation>", "</annotation>", "<filename>", "</filename>", "../../etc/passwd",
                                "shapes-3-0000.jpg", "<size><width>", "</width><height>", "</height></size>",
                                "<object><name>disc</name><bndbox><xmin>", "</xmin><ymin>", "</ymin><xmax>",
                                "</xmax><ymax>", "</ymax></bndbox></object>", "-1", "1e309", "nan", "&amp;", "<a>" * 50,
                                "\x00", "é", _LAUGHS])
    hostile = st.one_of(st.binary(max_size=300), st.lists(fragment, max_size=30).map(lambda p: "".join(p).encode()))

    @settings(max_examples=int(os.environ.get("ODAL_FUZZ_VOC_EXAMPLES", "60")), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile)
    def check(content: bytes) -> None:
        (folder / "annots" / "zz-hostile.xml").write_bytes(content)
        found = voc.read(folder)
        assert len(found.items) + len(found.skipped) == 3  # the two good files read, the hostile one or its message
        assert all(message.startswith("zz-hostile.xml: skipped: ") for message in found.skipped)
        for item in found.items:  # nothing outside the image folder, every box a non-empty part of its image
            assert item.image.resolve().is_relative_to(found.data_dir)
            assert all(0 <= x0 < x1 <= item.width and 0 <= y0 < y1 <= item.height for _, x0, y0, x1, y1 in item.boxes)

    check()
