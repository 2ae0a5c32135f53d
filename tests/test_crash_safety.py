"""Crash safety, proven by fault injection: the real daemon is SIGKILLed (with its worker) at random moments.

Moments: while starting, mid-ingest (a large export burst), mid-records, mid-training, mid-evaluate, mid-export,
mid-publish and mid-retention, each chosen by watching the daemon's JSON log for the stage's event and then waiting
a random delay.  After every kill the workspace must hold (see :func:`check_invariants`):

* the ledger holds each annotation at most once and nothing that is not in the export; once a restart got past
  its first ingest, the accepted set of the ledger is the export's (each task's newest answer: the annotator also
  changes answers, accept to reject and back);
* the newest completed round's train.record + eval.record hold exactly that round's accepted set, no duplicates
  (rows changed after the round may be in them or not);
* every numbered version folder under the base path is complete and loads; version numbers only increase (on
  disk and in the history); nothing half-made is visible as a version.

At the end the daemon is left alone: it must finish the interrupted work with a round that covers every accepted
annotation, and leave no leftovers (staging, deleting or partial folders).

Default: a few cheap kills and one mid-publish kill (a few minutes).  ``ODAL_FULL_FAULTS=1`` runs 200 kills over
every moment (hours on 2 cores: a fresh worker needs ~100 s per round); ``ODAL_FAULT_KILLS=N`` sets the count,
``ODAL_FAULT_SEED`` the seed.  Each kill is printed as one line (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess, append_records, make_workspace, query
from odal.daemon.sources import datasets
from odal.daemon.rounds.publish import MARKER, version_dirs

FULL = os.environ.get("ODAL_FULL_FAULTS") == "1"
KILLS = int(os.environ.get("ODAL_FAULT_KILLS", "200" if FULL else "5"))
SEED = int(os.environ.get("ODAL_FAULT_SEED", str(int(time.time()))))

# moment -> (event that starts the window, extra fields, max random delay after it in seconds)
MOMENTS = {
    "startup": (None, {}, 1.2),
    "ingest": ("daemon_started", {}, 0.6),
    "records": ("stage_started", {"stage": "records"}, 0.15),
    "train-early": ("stage_started", {"stage": "train"}, 3.0),
    "train": ("stage_started", {"stage": "train"}, 60.0),
    "evaluate": ("stage_started", {"stage": "evaluate"}, 12.0),
    "export": ("stage_started", {"stage": "export"}, 35.0),
    "publish": ("round_trained", {}, 0.4),
    "retention": ("version_published", {}, 0.3),
    "after-round": ("round_published", {}, 1.0),
}
CHEAP = ["startup", "ingest", "ingest", "records", "train-early"]
FULL_WEIGHTS = {"startup": 2, "ingest": 4, "records": 2, "train-early": 3, "train": 3, "evaluate": 1, "export": 2,
                "publish": 3, "retention": 1, "after-round": 1}


class Annotator:
    """Appends ``db-out`` records for a pool of generated images: accepts to train on, changed answers to tasks
    already answered, and bursts of ignores."""

    def __init__(self, items: list, export: Path, rng: random.Random):
        self.items, self.export, self.rng = items, export, rng
        self.cursor = 0
        self.accepted: set[str] = set()
        self.answered: dict[str, object] = {}  # input hash -> item

    def batch(self, accepts: int = 3) -> None:
        assert self.cursor + accepts <= len(self.items), "the pool of fresh images ran out"
        records = []
        for item in self.items[self.cursor: self.cursor + accepts]:
            records.append(datasets.prodigy_record(item, item.image.name))
            self.accepted.add(str(datasets.input_hash(item.image)))
            self.answered[str(datasets.input_hash(item.image))] = item
        self.cursor += accepts
        if records:
            append_records(self.export, records)

    def change_answers(self, count: int) -> None:
        """Newer answers (a later ``_timestamp``) to answered tasks: an accept becomes a reject, a reject an accept
        again.  The newest answer wins; the export's last line of a task is its newest."""
        records = []
        for hashed in self.rng.sample(sorted(self.answered), min(count, len(self.answered))):
            item = self.answered[hashed]
            answer = "reject" if hashed in self.accepted else "accept"
            records.append(datasets.prodigy_record(item, item.image.name, answer, timestamp=int(time.time()) + 1))
            (self.accepted.discard if answer == "reject" else self.accepted.add)(hashed)
        if records:
            append_records(self.export, records)

    def burst(self, lines: int = 1500) -> None:
        """Many ignored tasks at once (distinct inputs): an ingest that takes long enough to be interrupted."""
        base = self.rng.randrange(10**12)
        records = []
        for n in range(lines):
            item = self.items[n % len(self.items)]
            record = datasets.prodigy_record(item, item.image.name, "ignore")
            record["_input_hash"] = base + n
            record["_task_hash"] = base + n
            records.append(record)
        append_records(self.export, records)


class Invariants:
    """What must hold whenever the daemon is dead, however it died; remembers what it saw before."""

    def __init__(self, config: Path):
        self.workspace = config.parent
        self.db = self.workspace / "work" / "ledger.sqlite"
        self.base = self.workspace / "models" / "odal"
        self.max_version = 0
        self.seen_versions: dict[int, str] = {}  # version -> marker text
        self.loaded: set[tuple[int, str]] = set()

    def export_records(self) -> list[dict]:
        export = self.workspace / "exports" / "annotations.jsonl"
        return [json.loads(line) for line in export.read_text().splitlines() if line.strip()]

    def check(self, ingested_all: bool) -> dict:
        if not self.db.exists():
            return {"versions": []}
        records = self.export_records()
        given = {(str(r["_input_hash"]), r["answer"], float(r["_timestamp"])) for r in records}
        newest = {str(r["_input_hash"]): r["answer"] for r in records}  # the last line of a task is its newest
        rows = query(self.db, "SELECT input_hash, answer, timestamp, seq FROM annotations")
        hashes = [r["input_hash"] for r in rows]
        assert len(hashes) == len(set(hashes))
        assert {(r["input_hash"], r["answer"], r["timestamp"]) for r in rows} <= given, \
            "the ledger holds an answer that is not in the export"
        if ingested_all:
            assert {r["input_hash"] for r in rows if r["answer"] == "accept"} == \
                {h for h, a in newest.items() if a == "accept"}, "the ledger's accepted set is not the export's"
        self._check_records(rows)
        return {"versions": self._check_versions()}

    def _check_records(self, rows) -> None:
        rounds = query(self.db, "SELECT id, seq FROM rounds WHERE state = 'published' ORDER BY id DESC LIMIT 1")
        if not rounds:
            return
        round_id, seq = rounds[0]["id"], rounds[0]["seq"]
        # A row changed after the round (seq above the round's) may or may not have been accepted then.
        expected = {r["input_hash"] for r in rows if r["answer"] == "accept" and r["seq"] <= seq}
        changed_since = {r["input_hash"] for r in rows if r["seq"] > seq}
        folder = self.workspace / "work" / "rounds" / str(round_id)
        ids = _source_ids(folder / "train.record") + _source_ids(folder / "eval.record")
        assert len(ids) == len(set(ids)), f"round {round_id}: duplicate source ids in its TFRecords"
        assert expected <= set(ids) <= expected | changed_since, \
            f"round {round_id}: TFRecords differ from its accepted set"

    def _check_versions(self) -> list[int]:
        on_disk = version_dirs(self.base)
        history = {r["version"]: r["state"] for r in query(self.db, "SELECT version, state FROM versions")}
        recorded_max = max(history, default=0)
        assert recorded_max >= self.max_version or not history, "the history's newest version went backwards"
        for version, path in sorted(on_disk.items()):
            assert (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file(), \
                f"version {version} is incomplete"
            marker = (path / MARKER).read_text()
            assert json.loads(marker)["version"] == version
            if version in self.seen_versions:
                assert self.seen_versions[version] == marker, f"version number {version} was reused"
            else:
                assert version > self.max_version, f"new version {version} is not above {self.max_version}"
                self.seen_versions[version] = marker
            if (version, marker) not in self.loaded:
                _load(path)
                self.loaded.add((version, marker))
        self.max_version = max([self.max_version, recorded_max, *on_disk])
        return sorted(on_disk)

    def leftovers(self) -> list[str]:
        found = []
        for folder, patterns in ((self.base, (".staging-*", ".deleting-*")),
                                 (self.workspace / "work" / "checkpoints", (".*partial*", ".deleting-*")),
                                 (self.workspace / "work" / "rounds", (".deleting-*",))):
            for pattern in patterns:
                found += [str(p) for p in folder.glob(pattern)]
        return found


def _source_ids(record: Path) -> list[str]:
    import tensorflow as tf

    ids = []
    for raw in tf.data.TFRecordDataset(str(record)):
        example = tf.train.Example.FromString(raw.numpy())
        ids.append(example.features.feature["image/source_id"].bytes_list.value[0].decode())
    return ids


def _load(path: Path) -> None:
    import tensorflow as tf

    model = tf.saved_model.load(str(path))
    assert "serving_default" in model.signatures


def _plan(rng: random.Random) -> list[str]:
    if FULL or KILLS > 12:
        names = list(FULL_WEIGHTS)
        return rng.choices(names, weights=[FULL_WEIGHTS[n] for n in names], k=KILLS)
    plan = [rng.choice(CHEAP) for _ in range(max(KILLS - 1, 0))]
    return plan + ["publish"]  # one kill at the end of a whole round (mid-publish)


@pytest.mark.slow
@pytest.mark.timeout(0 if FULL else 1500)
def test_the_daemon_killed_at_random_moments_loses_nothing_and_finishes_the_work(tmp_path):
    rng = random.Random(SEED)
    # Each kill adds up to 3 fresh accepts: a pool that runs dry leaves rounds nothing new to train on.
    items = datasets.generate_shapes(tmp_path / "images", 10 + KILLS * 3, seed=11)  # 4 + 3 a kill + 2 at the end
    config = make_workspace(tmp_path / "ws", items, steps=10, min_new=2, eval_fraction=0.2 if FULL else 0.0)
    annotator = Annotator(items, config.parent / "exports" / "annotations.jsonl", rng)
    invariants = Invariants(config)
    daemon = DaemonProcess(config)
    annotator.batch(4)
    print(f"\nseed {SEED}, {KILLS} kills")
    started = time.monotonic()
    survived = 0
    try:
        for number, moment in enumerate(_plan(rng), 1):
            event, fields, delay = MOMENTS[moment]
            if moment == "ingest":
                annotator.burst()
            if moment != "startup" or rng.random() < 0.5:
                annotator.batch(rng.randint(2, 3))
            if rng.random() < 0.3:
                annotator.change_answers(rng.randint(1, 2))
            daemon.start()
            waited = None
            if event is not None:
                timeout = 10 if moment == "ingest" else 400
                waited = daemon.wait_event(event, timeout, **fields)
            assert daemon.alive(), (config.parent / "daemon.stderr").read_text()[-3000:]  # it never exits by itself
            time.sleep(rng.uniform(0, delay))
            daemon.read_events()
            last = daemon.events[-1]["event"] if daemon.events else "-"
            daemon.kill()
            ingested = any(e.get("event") == "round_started" for e in daemon.events)
            state = invariants.check(ingested_all=ingested)
            survived += 1
            print(f"kill {number:3d} {moment:<12} {'hit' if waited or event is None else 'timeout':<7} "
                  f"last event {last:<18} versions {state['versions']}  {time.monotonic() - started:6.0f} s",
                  flush=True)

        # Leave it alone: it must finish the interrupted work.  Two fresh accepts make sure a round is due even if
        # the last kill left a single changed answer pending (fewer than min_new waits for more, by design).
        annotator.batch(2)
        daemon.start()
        everything = annotator.accepted
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            assert daemon.alive(), (config.parent / "daemon.stderr").read_text()[-3000:]
            daemon.read_events()
            rounds = query(invariants.db, "SELECT id, seq FROM rounds WHERE state = 'published' ORDER BY id DESC")
            if rounds:
                covered = {r["input_hash"] for r in query(
                    invariants.db, "SELECT input_hash FROM annotations WHERE answer = 'accept' AND seq <= ?",
                    (rounds[0]["seq"],))}
                if covered == everything and not _round_running(invariants.db):
                    break
            time.sleep(0.5)
        else:
            pytest.fail("no round published covering every accepted annotation within 15 minutes")
        time.sleep(1.0)  # retention runs right after the round is recorded
        assert daemon.terminate() == 0
        state = invariants.check(ingested_all=True)
        assert state["versions"], "no version is being served"
        assert invariants.leftovers() == []
        rows = query(invariants.db, "SELECT version FROM versions WHERE state IN ('published', 'unconfirmed', "
                                    "'confirmed')")
        published = {r["version"] for r in rows}
        assert published == set(state["versions"]), "the history and the base path disagree on what is served"
        print(f"survived {survived} kills with every invariant held; versions {state['versions']}; "
              f"{time.monotonic() - started:.0f} s")
    finally:
        daemon.stop()


def _round_running(db: Path) -> bool:
    return bool(query(db, "SELECT id FROM rounds WHERE state = 'running'"))


@pytest.mark.parametrize("moment", ["worker_started", "round_started"])
def test_sigterm_during_a_round_exits_0_and_leaves_no_worker_running(tmp_path, moment):
    """Polite stop at the worst moments: while the worker child starts, and just after it did."""
    from daemon_harness import processes_in

    items = datasets.generate_shapes(tmp_path / "images", 4, seed=2)
    config = make_workspace(tmp_path / "ws", items, min_new=2)
    append_records(config.parent / "exports" / "annotations.jsonl",
                   [datasets.prodigy_record(i, i.image.name) for i in items])
    daemon = DaemonProcess(config).start()
    try:
        assert daemon.wait_event(moment, 120) is not None
        assert daemon.terminate(90) == 0
        deadline = time.monotonic() + 15
        while processes_in(config.parent) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_in(config.parent) == []
        rounds = query(config.parent / "work" / "ledger.sqlite", "SELECT state FROM rounds")
        assert [r["state"] for r in rounds] == ["abandoned"]
    finally:
        daemon.stop()
