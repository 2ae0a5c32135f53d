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
