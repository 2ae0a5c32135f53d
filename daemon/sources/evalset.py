"""The fixed evaluation set: held-out annotations that are only ever evaluated on, never trained on.

Named in ``odal.toml`` as ``[gate] eval_export`` (a ``prodigy db-out`` file, kept outside ``prodigy.export_dir``)
or ``[gate] eval_dataset`` (a dataset of ``[prodigy] database``).  When set, every round evaluates the candidate
and the served version on these images (and on nothing else), and trains on every ledger annotation except those
of the same images.  Without it, rounds evaluate on the stable eval split of the ledger (``eval_fraction``).

Its records go through the same parsing and image checks as training records (``prodigy_format``); a bad line is
logged (``eval_record_set_aside`` with file and line) and left out, the rest is used.  The source is read again
only when it changed (file identity, size and mtime; the dataset's example count and newest id), so a bad line is
reported once per change, not once per round.  Bounded: at most :data:`MAX_BYTES` read and :data:`MAX_RECORDS`
images used (an eval set this large already costs minutes a round).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from odal.daemon.system import log as logs
from odal.common.errors import InvalidRecord
from odal.daemon.sources.prodigy_format import open_image, parse_record
from odal.daemon.sources.prodigy_db import check_schema, connect_readonly, file_label

if TYPE_CHECKING:  # the configuration imports the sources' limits
    from odal.daemon.config import Config

log = logs.get("odal.evalset")

MAX_BYTES = 256 << 20
MAX_RECORDS = 5000


@dataclass(frozen=True)
class EvalSet:
    source: str
    annotations: list[dict]  # like Ledger.accepted(): input_hash, image_path, width, height, boxes
    lines: int = 0
    set_aside: int = 0
    notes: list[str] = field(default_factory=list)  # truncation and similar, shown by `odal status`

    def summary(self) -> dict:
        return {"source": self.source, "images": len(self.annotations), "lines": self.lines,
                "set_aside": self.set_aside, "notes": self.notes}


_CACHE: dict[str, tuple[tuple, EvalSet]] = {}


def load(cfg: Config, labels: Collection[str], blob_dir: Path) -> EvalSet | None:
    """The configured fixed eval set (None when none is configured).  Raises OSError / sqlite3 errors when the
    source cannot be read at all (the round then fails, naming it)."""
    if cfg.eval_export is not None:
        return _cached(str(cfg.eval_export), _file_fingerprint(cfg.eval_export), labels, cfg, blob_dir,
                       lambda: _file_lines(cfg.eval_export))
    if cfg.eval_dataset:
        source = file_label(cfg.prodigy_db, cfg.eval_dataset)
        return _cached(source, _db_fingerprint(cfg.prodigy_db, cfg.eval_dataset), labels, cfg, blob_dir,
                       lambda: _db_lines(cfg.prodigy_db, cfg.eval_dataset))
    return None


def _cached(source: str, fingerprint: tuple, labels, cfg: Config, blob_dir: Path, lines) -> EvalSet:
    key = (fingerprint, tuple(labels), str(cfg.data_dir))
    hit = _CACHE.get(source)
    if hit is not None and hit[0] == key:
        return hit[1]
    evalset = read(source, lines(), labels, cfg.data_dir, blob_dir)
    _CACHE[source] = (key, evalset)
    log.info("eval_set_read", file=source, images=len(evalset.annotations), lines=evalset.lines,
             set_aside=evalset.set_aside)
    return evalset


def read(source: str, lines, labels: Collection[str], data_dir: Path, blob_dir: Path) -> EvalSet:
    """The eval set from ``lines`` ((line number, raw bytes or str), ... ; None as a line: the byte bound was hit).

    Newest answer per input wins (as in the ledger); only accepted answers with their image are kept."""
    newest: dict[str, tuple[float, dict | None]] = {}
    count, set_aside, notes = 0, 0, []
    labels = frozenset(labels)
    for number, raw in lines:
        if raw is None:
            notes.append(f"read only the first {MAX_BYTES >> 20} MiB (lines 1-{number})")
            break
        if not raw.strip():
            continue
        count += 1
        try:
            ann = parse_record(_json(raw), labels)
            if ann.answer == "accept":
                image = open_image(ann, data_dir, blob_dir)
                item = {"input_hash": ann.input_hash, "image_path": str(image.path), "width": image.width,
                        "height": image.height, "boxes": [box.as_dict() for box in ann.boxes]}
            else:
                item = None  # a newer reject/ignore takes the image out of the eval set
        except InvalidRecord as error:
            set_aside += 1
            log.error("eval_record_set_aside", file=source, line=number, error=str(error))
            continue
        except Exception as error:  # noqa: BLE001 - one odd line never costs the others
            set_aside += 1
            log.error("eval_record_set_aside", file=source, line=number, error=f"{type(error).__name__}: {error}")
            continue
        if ann.input_hash not in newest or ann.timestamp >= newest[ann.input_hash][0]:
            newest[ann.input_hash] = (ann.timestamp, item)
    annotations = sorted((item for _, item in newest.values() if item is not None), key=lambda a: a["input_hash"])
    if len(annotations) > MAX_RECORDS:
        notes.append(f"used {MAX_RECORDS} of {len(annotations)} images (the first by input hash)")
        annotations = annotations[:MAX_RECORDS]
    for note in notes:
        log.warning("eval_set_truncated", file=source, note=note)
    return EvalSet(source, annotations, count, set_aside, notes)


def _json(raw: bytes | str) -> object:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRecord(f"malformed JSON: {error}") from None
    except RecursionError:
        raise InvalidRecord("malformed JSON: nested too deeply") from None


def _file_fingerprint(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _file_lines(path: Path):
    with open(path, "rb") as handle:
        read, number = 0, 0
        while True:
            raw = handle.readline(MAX_BYTES - read + 1)  # a line never makes the read exceed the bound
            if not raw:
                return
            read += len(raw)
            if read > MAX_BYTES:
                yield number, None
                return
            number += 1
            yield number, raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw


_EXAMPLES = """SELECT example.id, example.content FROM example JOIN link ON link.example_id = example.id
JOIN dataset ON dataset.id = link.dataset_id WHERE dataset.name = ? ORDER BY example.id"""


def _db_fingerprint(db_path: Path, dataset: str) -> tuple:
    check_schema(db_path)
    conn = connect_readonly(db_path, timeout=10)
    try:
        return tuple(conn.execute(f"SELECT COUNT(*), MAX(id) FROM ({_EXAMPLES})", (dataset,)).fetchone())
    finally:
        conn.close()


def _db_lines(db_path: Path, dataset: str):
    conn = connect_readonly(db_path, timeout=10)
    try:
        read = 0
        for example_id, content in conn.execute(_EXAMPLES, (dataset,)):
            content = content if isinstance(content, (bytes, str)) else str(content)
            read += len(content)
            if read > MAX_BYTES:
                yield example_id, None
                return
            yield example_id, content
    finally:
        conn.close()
