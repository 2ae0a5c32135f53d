"""What a round trains and evaluates on: the ledger's accepted annotations whose image is still there, split
stably into train and eval (``eval_fraction``), or, with a fixed eval set (``odal.daemon.sources.evalset``), all of them
trained on except the eval set's images, which only evaluate.  Written as the round's ``annotations.jsonl``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from odal.daemon.sources import evalset as evalsets
from odal.daemon.sources import images
from odal.daemon.sources import safe_files
from odal.daemon.system import log as logs
from odal.daemon.rounds import gate as gates
from odal.daemon.system.atomic import atomic_write

if TYPE_CHECKING:  # the configuration imports the rounds' gate and pipeline check
    from odal.daemon.config import Config

log = logs.get("odal.round")


def split_of(input_hash: str, eval_fraction: float) -> str:
    """A stable train/eval split: the same annotation is always on the same side."""
    bucket = int.from_bytes(hashlib.sha256(str(input_hash).encode()).digest()[:4], "big") / 2**32
    return "eval" if bucket < eval_fraction else "train"


def with_images(accepted: list[dict], roots: list[Path]) -> tuple[list[dict], list[str]]:
    """The annotations whose image file is still there and usable, and the paths of those that are not.

    One image deleted from the data folder after it was annotated must not fail every later round; nor may one
    replaced by a FIFO, a device link, a file over the byte limit or a decompression bomb reach the worker: each is
    checked through :mod:`odal.daemon.sources.safe_files` (inside ``roots``, regular, bounded) and its header's size."""
    present, missing = [], []
    for annotation in accepted:
        path = annotation.get("image_path")
        (present if path and _usable(path, roots) else missing).append(annotation)
    return present, [str(a.get("image_path")) for a in missing]


def image_roots(cfg: Config) -> list[Path]:
    """Where a round's images may live: the data dir, and the work dir's store of inline (data URI) images."""
    return [cfg.data_dir.resolve(), (cfg.work_dir / "images").resolve()]


def _usable(path: str, roots: list[Path]) -> bool:
    try:
        with safe_files.open_file(path, roots) as (_resolved, _st, handle):
            images.header_size(handle)
    except FileNotFoundError:
        return False
    except (safe_files.Refused, images.TooLarge, images.Undecodable, OSError) as error:
        log.warning("image_refused", path=path, error=str(error))
        return False
    return True


def assign_splits(accepted: list[dict], eval_fraction: float,
                  fixed_eval: list[dict] | None = None) -> list[tuple[dict, str]]:
    """Each annotation with its split.  With a fixed eval set: every ledger annotation trains, except those of an
    image in the eval set (by input hash or image file), and only the eval set evaluates."""
    if fixed_eval is not None:
        held_out = {str(a["input_hash"]) for a in fixed_eval} | {str(a["image_path"]) for a in fixed_eval}
        return [(a, "train") for a in accepted if str(a["input_hash"]) not in held_out
                and str(a["image_path"]) not in held_out] + [(a, "eval") for a in fixed_eval]
    splits = {str(a["input_hash"]): split_of(a["input_hash"], eval_fraction) for a in accepted}
    if eval_fraction > 0 and len(accepted) >= 2:
        # Small data: keep at least one image on each side so both training and COCO eval have data.
        if "eval" not in splits.values():
            splits[min(splits, key=lambda h: hashlib.sha256(h.encode()).digest())] = "eval"
        if "train" not in splits.values():
            splits[max(splits, key=lambda h: hashlib.sha256(h.encode()).digest())] = "train"
    return [(a, splits[str(a["input_hash"])]) for a in accepted]


def write_annotations(path: Path, accepted: list[dict], labels: list[str], eval_fraction: float,
                      fixed_eval: list[dict] | None = None) -> dict:
    """The round's input list: every annotation with its split and label ids (one JSON a line); the counts."""
    return write_splits(path, assign_splits(accepted, eval_fraction, fixed_eval), labels)


def write_splits(path: Path, pairs: list[tuple[dict, str]], labels: list[str]) -> dict:
    counts = {"train": 0, "eval": 0}
    with atomic_write(path, "w") as out:
        for annotation, split in pairs:
            boxes = [dict(box, label_id=labels.index(box["label"]) + 1) for box in annotation["boxes"]]
            out.write(json.dumps({"input_hash": str(annotation["input_hash"]), "image_path": annotation["image_path"],
                                  "boxes": boxes, "split": split}) + "\n")
            counts[split] += 1
    return counts


def round_inputs(cfg: Config, accepted: list[dict], labels: list[str], bound) -> tuple[list, dict]:
    """(annotation, split) pairs of the round, and what the gate records about its eval set."""
    evalset = evalsets.load(cfg, labels, cfg.work_dir / "images")
    fixed = None
    if evalset is not None:
        fixed, gone = with_images(evalset.annotations, image_roots(cfg))
        if gone:
            bound.warning("eval_images_missing", count=len(gone), images=gone[:10])
    pairs = assign_splits(accepted, cfg.eval_fraction, fixed)
    if fixed is not None and len(pairs) < len(accepted) + len(fixed):
        bound.warning("eval_set_overlap", file=evalset.source, left_out=len(accepted) + len(fixed) - len(pairs),
                      note="annotations of eval-set images are evaluated on, never trained on")
    info = {"eval_set": evalset.summary() if evalset is not None else {"source": "split",
                                                                        "fraction": cfg.eval_fraction}}
    warning = gates.eval_set_warning([a for a, split in pairs if split == "eval"], labels)
    if warning:
        info["warning"] = warning
        bound.warning("eval_set_small", warning=warning)
    return pairs, info
