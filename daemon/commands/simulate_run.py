"""One run of ``odal simulate``: a workspace whose annotator labels the images a strategy asks for, round by round.

Everything a round does is the daemon's own code: the selected images' Prodigy records are appended to the
workspace's ``exports/`` file and read by the ingest handler into the ledger; :func:`odal.daemon.rounds.round.
run_round` snapshots it and sends the job to the TensorFlow worker child (the pipeline.config ``odal init`` writes,
the same steps), which trains on from the previous round's checkpoint, evaluates on the held-out test set (the
workspace's ``[gate] eval_export``: evaluated, never trained on) and exports; the version is published into the
model base path; the embedded server (``odal serve``) loads it, and the next selection scores the unlabelled
pool through :class:`odal.serving.client.ServingClient` pinned to that version, as the daemon's queue does.
Simulations publish every round (``[gate] tolerance = 1``) and skip re-evaluating the served version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from odal.daemon import config as config_module
from odal.daemon.commands import simulate_select as strategies
from odal.daemon.commands.simulate_classes import per_class_ap
from odal.daemon.commands.simulate_data import LabelledSet
from odal.daemon.commands.simulate_results import Results, labelled, round_record
from odal.daemon.rounds.round import run_round
from odal.daemon.rounds.worker_client import Worker
from odal.daemon.handlers import ingest
from odal.daemon.sources import safe_files
from odal.daemon.sources.images import pixels_for_scoring
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger
from odal.daemon.system.atomic import atomic_write_text, remove_tree
from odal.common.errors import RoundFailed


class RecordingWorker(Worker):
    """The daemon's worker client, for simulations: the version serving is not evaluated again each round (the
    gate publishes every round anyway, and its number is the previous round's), and the last result is kept.

    ``start``: a run's first round continues from this checkpoint (see :func:`start_checkpoint`) instead of
    restoring the fine-tune start itself, so every run begins from the same weights and the child's session
    (traced model, SavedModel graph) is kept from run to run rather than built again for each one."""

    last = None
    start: str | None = None

    def run(self, job, on_progress=lambda progress: None):
        self.last = None
        if job.init_checkpoint is None and self.start is not None:
            job = dataclasses.replace(job, init_checkpoint=self.start, fine_tune=None)
        self.last = super().run(dataclasses.replace(job, served=None), on_progress)
        return self.last


def workspace_toml(template: str, name: str, address: str) -> str:
    """The template workspace's odal.toml for the run ``name``: its own model name, the server's address, the
    held-out test set as the fixed eval set, and a gate that publishes every round (a simulation measures every
    round's model; with the default tolerance a worse round would keep the previous version serving)."""
    text = template.replace('name = "odal"', f'name = "{name}"', 1).replace('address = ""', f'address = "{address}"', 1)
    return text + ('\n[gate]\nmetric = "mAP@0.5"\ntolerance = 1.0\neval_export = "heldout/test.jsonl"\n')


class Run:
    """The workspace of one run (strategy and repeat, or the full-data reference) in ``out/runs/NAME``."""

    def __init__(self, sim, name: str, state: dict, test: list[str], steps: int | None = None):
        self.sim, self.name, self.state, self.steps = sim, name, state, steps
        self.dir = sim.out / "runs" / name
        self.base_path = self.dir / "models" / "odal"
        self._test = test

    def prepare(self) -> None:
        """Write (or rewrite, on resume) the workspace; drop what an interrupted round left."""
        sim, ws = self.sim, self.dir
        for sub in ("exports", "heldout", "models/odal"):
            (ws / sub).mkdir(parents=True, exist_ok=True)
        template = sim.out / "template"
        for name in ("pipeline.config", "label_map.pbtxt"):
            atomic_write_text(ws / name, (template / name).read_text())
        toml = workspace_toml((template / "odal.toml").read_text(), self.name, sim.address)
        if self.steps is not None:
            toml = re.sub(r"(?m)^steps_per_round = \d+$", f"steps_per_round = {self.steps}", toml)
        atomic_write_text(ws / "odal.toml", toml)
        atomic_write_text(ws / "heldout" / "test.jsonl",
                          "".join(json.dumps(sim.data.record(key)) + "\n" for key in self._test))
        # Versions newer than the last recorded round were published by a round that was interrupted before it
        # was recorded: that round runs again, so its version goes (the server then serves the recorded one).
        recorded = max((r["version"] or 0 for r in self.state["rounds"]), default=0)
        for version in sorted(p for p in self.base_path.iterdir() if p.name.isdigit() and int(p.name) > recorded):
            remove_tree(version)
        if not self.state["rounds"]:  # nothing recorded: start clean (an interrupted first round left a ledger)
            remove_tree(ws / "work")
            atomic_write_text(ws / "exports" / "annotations.jsonl", "")
        self.cfg = config_module.load(ws / "odal.toml")

    def train_round(self, number: int, added: list[str]) -> dict:
        """Annotate ``added``, run one real round; the round's record (also appended to the run's state)."""
        sim, cfg = self.sim, self.cfg
        started = time.monotonic()
        export = cfg.export_dir / "annotations.jsonl"
        with open(export, "a", encoding="utf-8") as out:  # what `prodigy db-out` adds: whole lines
            out.write("".join(json.dumps(sim.data.record(key)) + "\n" for key in added))
            out.flush()
            os.fsync(out.fileno())
        with Ledger(cfg.ledger_path) as ledger:
            stats = ingest.ingest_export_file(export, ledger, sim.data.labels, cfg.data_dir, cfg.work_dir / "images")
            accepted, seq = ledger.accepted(), ledger.max_seq()
        # Identical image files have one input hash: the ledger keeps one annotation for them (raccoon has such).
        expected = len({sim.data.record(key)["_input_hash"] for key in [*labelled(self.state), *added]})
        if stats.get("set_aside") or len(accepted) != expected:
            raise RoundFailed(f"{self.name} round {number}: the ledger holds {len(accepted)} accepted annotations, "
                              f"expected {expected} ({stats.get('set_aside')} set aside; see {sim.out / 'simulate.log'})")
        history = History(cfg.ledger_path)
        try:
            history.abandon_running()
            outcome = run_round(cfg, history, accepted, seq, sim.data.labels, sim.worker,
                                lambda text, detail=None: sim.progress.status(f"{self.name}: {text}"))
        finally:
            history.close()
        if outcome.state != "published":
            raise RoundFailed(f"{self.name} round {number} {outcome.state}: {outcome.error}")
        raw = sim.worker.last.metrics if sim.worker.last is not None else None
        per_class = None
        if len(sim.data.labels) > 1:  # one class: its AP is the mAP
            sim.client.wait_until_available(cfg.model_name, outcome.version, timeout=900)
            answers = sim.client.predict_many(cfg.model_name, [sim.pixels(key) for key in self._test],
                                              version=outcome.version, concurrency=2, timeout=120)
            per_class = per_class_ap(sim.data, self._test, answers)
        record = round_record(number, len(accepted), added, outcome.version, raw, per_class,
                              time.monotonic() - started, (outcome.timings or {}).get("train"))
        self.state["rounds"].append(record)
        self.state["pending"] = None
        return record

    def candidates(self, pool: list[str], version: int, scored: bool, labelled: list[str] = ()):
        """The unlabelled pool as the served version ``version`` sees it (empty detections when not ``scored``),
        and the ``labelled`` images' embeddings by the same version (None when none: the model has no
        ``image_embedding`` output, or no labelled image was asked for)."""
        if not scored:
            return [strategies.Candidate(key) for key in pool], None
        self.sim.client.wait_until_available(self.cfg.model_name, version, timeout=900)
        keys = list(pool) + list(labelled)
        found = self.sim.client.predict_many(self.cfg.model_name, [self.sim.pixels(key) for key in keys],
                                             version=version, concurrency=2, timeout=120)
        candidates = [strategies.Candidate(key, tuple(map(float, d.scores)), tuple(map(int, d.classes)),
                                           d.embedding) for key, d in zip(pool, found)]
        known = [d.embedding for d in found[len(pool):] if d.embedding is not None]
        return candidates, (np.stack(known) if known else None)


def start_checkpoint(sim, repeat: int, split) -> str:
    """The checkpoint every run of ``repeat`` starts from: a real first round (the fine-tune start restored as the
    daemon's first round does it) of one training step on the repeat's seed set, in ``runs/start-rREPEAT``.
    Its test-set evaluation is recorded as round -1."""
    state = sim.results.data.setdefault("starts", {}).setdefault(str(repeat), {"pending": None, "rounds": []})
    if not state.get("checkpoint"):
        sim.worker.start = None
        run = Run(sim, f"start-r{repeat}", state, split.test, steps=1)
        run.prepare()
        if not state["rounds"]:
            record = run.train_round(-1, list(split.seed))
            sim.results.save()
            sim.progress.round_done(run.name, record, count=False)
        history = History(run.cfg.ledger_path)
        try:
            state["checkpoint"] = history.checkpoints()[0][1]
        finally:
            history.close()
        sim.results.save()
    return state["checkpoint"]


def run_strategy(sim, strategy: str, repeat: int, split) -> None:
    """One strategy in one repeat: the seed round, then ``rounds`` rounds of ``batch`` selected images."""
    results: Results = sim.results
    state = results.run(strategy, repeat)
    if state["done"]:
        return
    sim.worker.start = start_checkpoint(sim, repeat, split)
    run = Run(sim, f"{strategy}-r{repeat}", state, split.test)
    run.prepare()
    settings = results.data["settings"]
    while len(state["rounds"]) <= settings["rounds"]:
        number = len(state["rounds"])
        if state["pending"] is None:
            if number == 0:
                added = list(split.seed)
            else:
                done = set(labelled(state))
                pool = [key for key in split.pool if key not in done]
                previous = state["rounds"][-1]["version"]
                candidates, embedded = run.candidates(pool, previous, strategies.needs_model(strategy),
                                                      sorted(done) if strategies.needs_embeddings(strategy) else ())
                added = sorted(strategies.select(strategy, candidates, settings["batch"], data=sim.data,
                                                 labelled=sorted(done), labelled_embeddings=embedded,
                                                 seed=settings["seed"] * 1000 + repeat * 100 + number))
            state["pending"] = {"round": number, "added": added}
            results.save()  # chosen before it is annotated: an interrupted round is redone with the same images
        record = run.train_round(number, state["pending"]["added"])
        results.save()
        sim.progress.round_done(run.name, record)
    state["done"] = True
    results.save()


def run_full(sim, split) -> None:
    """The reference: every pool image labelled from the start, trained for as many rounds as the strategies."""
    results: Results = sim.results
    state = results.full()
    if state["done"]:
        return
    sim.worker.start = start_checkpoint(sim, 0, split)
    run = Run(sim, "full-r0", state, split.test)
    run.prepare()
    while len(state["rounds"]) <= results.data["settings"]["rounds"]:
        added = sorted(split.pool) if not state["rounds"] else []
        record = run.train_round(len(state["rounds"]), added)
        results.save()
        sim.progress.round_done(run.name, record)
    state["labels"] = len(split.pool)
    state["done"] = True
    results.save()


def read_pixels(data: LabelledSet, key: str):
    """An image as the queue sends it to the server: read through safe_files, shrunk to at most 1024 a side."""
    _resolved, _st, raw = safe_files.read_file(data.data_dir / key, [data.data_dir])
    return pixels_for_scoring(raw)
