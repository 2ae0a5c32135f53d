"""A workspace as the daemon leaves it after two real rounds: the ``tiny_models`` fixture's two trained rounds
recorded in its ledger, both versions published into its base path, the round folder with its eval split.  Used by
the report and rollback tests (with ``odal serve`` serving it: the ``tiny_served`` fixture in conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from daemon_harness import make_workspace
from odal.daemon.config import load
from odal.daemon.rounds import gate as gates
from odal.daemon.rounds import publish
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger


def workspace_of_the_tiny_run(root: Path, tiny: dict, address: str):
    """A workspace holding what the daemon records of the tiny models' two real rounds: their rounds (metrics,
    timings, the gate's decision on their numbers), both versions published, the round folder with its eval split."""
    cfg = load(make_workspace(root, tiny["items"], serving_address=address))
    Ledger(cfg.ledger_path).close()
    history = History(cfg.ledger_path)
    cfg.base_path.mkdir(parents=True, exist_ok=True)
    served = None
    for number, (result, export) in enumerate(zip(tiny["results"], tiny["versions"]), 1):
        round_id = history.start_round(number)
        decision = gates.decide("mAP@0.5", 0.0, result["metrics"], served, number - 1 or None, None)
        staging = publish.staging_dir(cfg.base_path, round_id)
        shutil.copytree(export, staging)
        metrics = gates.summarize(result["metrics"])  # odal's names, as the daemon records them
        version, _ = publish.publish(staging, cfg.base_path, history, round_id, metrics)
        history.finish_round(round_id, "published", accepted=12 * number, n_train=result["counts"]["train"],
                             n_eval=result["counts"]["eval"], steps=result["train"]["steps"],
                             metrics=metrics, timings=dict(result["timings"], total=sum(
                                 result["timings"].values())), version=version, gate=decision)
        served = result["metrics"]
    history.close()
    (cfg.work_dir / "rounds" / "2").mkdir(parents=True)
    shutil.copy(tiny["dir"] / "round" / "annotations.jsonl", cfg.work_dir / "rounds" / "2" / "annotations.jsonl")
    return cfg
