"""``odal demo``: the whole loop for real on this machine, with a simulated annotator in place of Prodigy.

1. A workspace as ``odal init`` writes it: ``odal.toml``, a ``pipeline.config`` that fine-tunes the pretrained
   SSDLite (``--model ssdlite``, the default) or the tiny SSD from scratch (``--model tiny``), a label map, and
   images (generated shapes, or a PASCAL VOC folder such as ``../shared/datasets/raccoon`` used in place).
2. The embedded TF-Serving-compatible server (``odal serve``) on loopback, watching the model base path.
3. The real daemon (``odal-daemon``) as a child process.
4. The annotator appends a batch of ``prodigy db-out`` records to ``exports/annotations.jsonl`` (mostly accepts,
   one reject and one ignore per batch), waits for the daemon to publish the next version, and repeats.
5. The table of rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from odal.daemon.sources import datasets
from odal.daemon.sources import voc as voc_folders

from odal.daemon.commands import init as workspace_init
from odal.daemon.commands.status import rounds_table
from odal.daemon.store.db import LEDGER_FILE
from odal.daemon.store.history import History
from odal.common.processes import stop_process_group
from odal.serving.process import ServerProcess

MARKER = ".odal-demo"
DEMO_STEPS = {"ssdlite": 150, "tiny": 150}  # train steps a round; make demo (3 rounds) stays within 6 minutes


def write_workspace(workspace: Path, data_dir: Path, labels: list[str], steps: int, per_round: int,
                    serving_address: str = "", model: str = "tiny") -> Path:
    """A complete workspace folder (as ``odal init`` writes it, debounced for a scripted annotator); its
    ``odal.toml``.  The tests' workspaces keep the default, the tiny SSD (seconds a round); the demo passes its
    ``--model`` (ssdlite unless told)."""
    return workspace_init.write_workspace(workspace, data_dir, labels, model, steps, per_round, serving_address,
                                          debounce_seconds=1.0, header="odal demo")


def _append(path: Path, records: list[dict]) -> None:
    """What an annotation session adds to a db-out file: whole lines, one write, fsynced."""
    with open(path, "a", encoding="utf-8") as out:
        out.write("".join(json.dumps(record) + "\n" for record in records))
        out.flush()
        os.fsync(out.fileno())


def _wait_for_round(ledger_path: Path, done_before: int, timeout: float, daemon: subprocess.Popen) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode}")
        if ledger_path.exists():
            history = History(ledger_path, readonly=True)
            try:
                finished = [r for r in history.rounds(100)
                            if r["state"] in ("published", "held_back", "failed", "skipped")]
            except Exception:  # noqa: BLE001 - tables not created yet
                finished = []
            finally:
                history.close()
            if len(finished) > done_before:
                return finished[-1]
        time.sleep(0.5)
    return None


def _print_table(ledger: Path) -> None:
    """The table of rounds, whatever happened (nothing when the daemon never wrote its ledger)."""
    if not ledger.exists():
        print("\nno round ran (the daemon wrote no ledger)")
        return
    history = History(ledger, readonly=True)
    try:
        rounds = history.rounds(100)
        print("\n" + (rounds_table(rounds) if rounds else "no round ran"))
    except sqlite3.OperationalError as error:  # no rounds table yet
        print(f"\nno round ran ({error})")
    finally:
        history.close()


def run_demo(workspace: Path, rounds: int, voc: Path | None = None, per_round: int | None = None,
             steps: int | None = None, serve: bool = True, model: str = "ssdlite") -> int:
    workspace = workspace.resolve()
    if workspace.exists():
        if not (workspace / MARKER).exists():
            print(f"odal demo: {workspace} exists and is not a demo workspace; choose another --workspace",
                  file=sys.stderr)
            return 2
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    (workspace / MARKER).touch()

    if voc is not None:
        try:
            found = voc_folders.read(voc)
        except voc_folders.VocError as error:
            print(f"odal demo: {error}", file=sys.stderr)
            return 2
        for message in found.skipped:
            print(f"{found.annotations.name}/{message}", file=sys.stderr)
        if not found.items:
            print(f"odal demo: no usable annotated image in {voc} ({len(found.skipped)} skipped)", file=sys.stderr)
            return 2
        items, data_dir = found.items, found.data_dir
        per_round = per_round or 24
        steps = steps or DEMO_STEPS[model]
    else:
        per_round = per_round or 16
        steps = steps or DEMO_STEPS[model]
        items = datasets.generate_shapes(workspace / "images", per_round * rounds + 2 * rounds, seed=1)
        data_dir = workspace / "images"
    labels = datasets.labels_of(items)

    server = None
    address = ""
    if serve:
        (workspace / "models" / "odal").mkdir(parents=True, exist_ok=True)
        server = ServerProcess(workspace / "serve.log", "--model_name=odal",
                               f"--model_base_path={workspace / 'models' / 'odal'}", append=True)
        address = server.address
        print(f"embedded TF-Serving-compatible server: gRPC {address}, REST 127.0.0.1:{server.rest_port}")
    config = write_workspace(workspace, data_dir, labels, steps, per_round, address, model)
    print(f"workspace {workspace}: {len(items)} images, labels {labels}, model {model}, {per_round} annotations "
          f"and {steps} steps per round")

    daemon = subprocess.Popen([sys.executable, "-m", "odal.daemon", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=open(workspace / "daemon.log", "ab"),
                              start_new_session=True)
    export = workspace / "exports" / "annotations.jsonl"
    started = time.monotonic()
    failed = False
    try:
        cursor = 0
        for number in range(1, rounds + 1):
            batch = items[cursor: cursor + per_round]
            extra = items[cursor + per_round: cursor + per_round + 2] if voc is None else []
            cursor += per_round + len(extra)
            if len(batch) < per_round:  # fewer new annotations than trigger a round: it would never start
                print(f"only {len(batch)} annotated images left, fewer than the {per_round} that start a round; "
                      f"stopping after round {number - 1}")
                break
            records = [datasets.prodigy_record(item, str(item.image.relative_to(data_dir))) for item in batch]
            records += [datasets.prodigy_record(item, str(item.image.relative_to(data_dir)), answer)
                        for item, answer in zip(extra, ("reject", "ignore"))]
            _append(export, records)
            print(f"annotator: +{len(batch)} accepted" + (f", +{len(extra)} reject/ignore" if extra else "")
                  + f" -> {export.name}; waiting for round {number} ...", flush=True)
            result = _wait_for_round(config.parent / "work" / LEDGER_FILE, number - 1, 1200, daemon)
            if result is None:
                print(f"timed out waiting for round {number}; see {workspace / 'daemon.log'}", file=sys.stderr)
                failed = True
                break
            metrics = result.get("metrics") or {}
            print(f"  round {result['id']} {result['state']}: version {result.get('version')}, "
                  f"mAP {metrics.get('mAP')}, {round((result.get('timings') or {}).get('total', 0), 1)} s"
                  + (f"; gate: {result['gate']['reason']}" if result.get("gate") else ""), flush=True)
            if result["state"] not in ("published", "held_back"):  # held back: the served version was better
                print(f"round failed: {result.get('error')}; see {workspace / 'daemon.log'}", file=sys.stderr)
                failed = True
                break
    except RuntimeError as error:  # the daemon exited
        print(f"odal demo: {error}; see {workspace / 'daemon.log'}", file=sys.stderr)
        failed = True
    finally:
        stop_process_group(daemon, 60)
        if server is not None:
            server.stop(60)
    _print_table(config.parent / "work" / LEDGER_FILE)
    if failed:
        return 1
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; versions in {workspace / 'models' / 'odal'}; "
          f"`odal status --workspace {workspace}` shows more.")
    return 0
