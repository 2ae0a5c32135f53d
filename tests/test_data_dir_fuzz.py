"""Property-based fuzzing (hypothesis) of everything the daemon reads from the data dir.

Each example builds a real data dir of generated entries (FIFOs, device links and nodes, symlink loops, links
leading out, bombs, truncated and mutated images, random bytes with image names, folders named ``*.jpg``, empty
and sparse 3 GiB files, links inside) mixed with good images, then runs the real queue scan, image events and
scoring reads, the real ingest of an export naming every entry, and the round snapshot.  Invariants: nothing raises,
nothing blocks, memory stays bounded, every good image flows through every path and every line is either ingested
or set aside with its line number.

``make test`` runs 200 examples; the long mode:
``ODAL_FUZZ_DATADIR_EXAMPLES=20000 nice -n 10 .venv/bin/python -m pytest tests/test_data_dir_fuzz.py -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import KINDS, jpeg, make

from odal.daemon.sources import limits

from odal.daemon.sources import safe_files
from odal.daemon.handlers import scoring
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.handlers.ingest import ingest_export_file
from odal.daemon.rounds.inputs import with_images
from odal.daemon.store.ledger import Ledger

EXAMPLES = int(os.environ.get("ODAL_FUZZ_DATADIR_EXAMPLES", "200"))
SUFFIXES = (".png", ".jpg", ".JPEG", ".gif", ".webp", ".tif", ".bmp")
_GOOD = jpeg((48, 36), 90)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # a real tmpfs: fsyncs cost nothing

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12)


@st.composite
def mutated_image(draw) -> bytes:
    """A good JPEG with a few bytes changed, a piece cut out, or cut short."""
    data = bytearray(_GOOD)
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data) - 1))
        del data[start:start + draw(st.integers(1, 400))]
    return bytes(data)


entry = st.one_of(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000)),
    st.tuples(st.just("bytes"), st.one_of(st.binary(max_size=3000), mutated_image())),
)


def _rss_hwm_kb() -> int:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:")).split()[1])


def _on_alarm(*_):
    raise TimeoutError("a data-dir read blocked")


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(entries=st.lists(st.tuples(entry, names, st.sampled_from(SUFFIXES), st.booleans()), max_size=10))
def test_hostile_entries_never_stop_the_queue_the_ingest_or_the_snapshot_and_good_images_still_flow(entries):
    root = Path(tempfile.mkdtemp(prefix="odal-fuzz-", dir=SCRATCH))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(30)
    start_hwm = _rss_hwm_kb()
    try:
        data, outside, work = root / "data", root / "outside", root / "work"
        data.mkdir()
        outside.mkdir()
        good = {make(data, "always-good.jpg", "good", seed=1)}
        made: list[tuple[str, str]] = []  # (name relative to data, kind)
        for index, ((kind, payload), stem, suffix, in_sub) in enumerate(entries):
            name = f"{'sub/' if in_sub else ''}{index}-{stem.lstrip('.') or 'x'}{suffix}"
            if kind == "bytes":
                (data / name).parent.mkdir(parents=True, exist_ok=True)
                (data / name).write_bytes(payload)
            else:
                make(data, name, kind, seed=payload, outside=outside)
            if kind in ("good", "inside_link"):
                good.add(data / name)
            made.append((name, kind))
        good_resolved = {str(p.resolve()) for p in good} | {str(p) for p in data.glob("target-*.jpg")}

        ledger = Ledger(work / "ledger.sqlite")
        queue = ActiveQueue(work / "ledger.sqlite", data)
        try:
            # The queue: scan, an event for every entry, scoring reads.
            queue.scan()
            for name, _kind in made:
                queue.image_changed(str(data / name))
            read = {str(image.path) for image in scoring.read_pending(queue, 100)}
            assert good_resolved <= read
            assert all(Path(path).is_relative_to(data.resolve()) for path in read)
            assert scoring.read_pending(queue, 100) == [] or {str(i.path) for i in scoring.read_pending(queue, 100)} <= read

            # The ingest: one accepted line per entry, plus the good image; each line ingested or set aside.
            lines = [{"image": name, "_input_hash": n + 1, "answer": "accept", "width": 40, "height": 30}
                     for n, (name, _kind) in enumerate(made)]
            lines.append({"image": "always-good.jpg", "_input_hash": 0, "answer": "accept"})
            export = root / "export.jsonl"
            export.write_text("".join(json.dumps(line) + "\n" for line in lines))
            stats = ingest_export_file(export, ledger, ["disc"], data, work / "images")
            assert stats["lines"] == len(lines) and stats["accept"] + stats["set_aside"] == len(lines)
            accepted = {row["input_hash"]: row for row in ledger.accepted()}
            assert "0" in accepted
            for n, (name, kind) in enumerate(made):
                if kind in ("good", "inside_link"):
                    assert str(n + 1) in accepted, (name, kind, ledger.invalid_items(50))
                elif kind != "bytes":
                    assert str(n + 1) not in accepted, (name, kind)
            set_aside = ledger.invalid_items(100)
            assert len(set_aside) == stats["set_aside"] and all(item["line"] >= 1 for item in set_aside)

            # The round snapshot keeps exactly the accepted images that are still fine.
            present, _missing = with_images(list(accepted.values()), [data.resolve(), (work / "images").resolve()])
            assert len(present) == len(accepted)
        finally:
            queue.close()
            ledger.close()
        assert _rss_hwm_kb() - start_hwm < 200_000  # no bomb decoded, no device or sparse file read whole
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        limits.reset()
        shutil.rmtree(root, ignore_errors=True)
