"""The publish gate with real rounds: real OD API training in the real worker child, real SavedModels, the real
``odal status``.  One workspace with a fixed eval set (a held-out db-out file) goes through five rounds:

1. the first version is published whatever its quality;
2. a round that passes (tolerance 1.0) publishes version 2; its served number is version 1 measured again;
3. a round trained on wrong labels and boxes (an annotator who got everything wrong) is genuinely worse than the
   served version 2 and is held back at the default tolerance;
4. after ``odal rollback`` of version 2, a round that cannot pass (tolerance -1.0), starting from the held-back
   round 3's weights, is held back against version 1, which stays the only version; ``odal status`` shows both
   numbers;
5. a served version odal cannot read does not block publishing;
and no round ever puts an eval-set image into its training records.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from daemon_harness import make_workspace, odal_cli
from odal.daemon.sources import datasets
from odal.daemon.config import load
from odal.daemon.rounds import publish
from odal.daemon.commands.rollback import rollback
from odal.daemon.rounds.round import run_round
from odal.daemon.rounds.worker_client import Worker
from odal.daemon.store.history import History
from odal.daemon.store.ledger import Ledger

pytestmark = pytest.mark.slow

LABELS = list(datasets.SHAPE_LABELS)


def _accepted(items, wrong: bool = False) -> list[dict]:
    """Ledger rows (as ``Ledger.accepted()`` gives them) for ``items``; ``wrong``: every box with the other label,
    moved to the other half of the image."""
    rows = []
    for item in items:
        boxes = []
        for label, x0, y0, x1, y1 in item.boxes:
            box = {"label": label, "xmin": x0 / item.width, "ymin": y0 / item.height, "xmax": x1 / item.width,
                   "ymax": y1 / item.height}
            if wrong:
                box = {"label": LABELS[1 - LABELS.index(label)], "xmin": box["xmin"], "xmax": box["xmax"],
                       "ymin": 1 - box["ymax"], "ymax": 1 - box["ymin"]}
            boxes.append(box)
        rows.append({"input_hash": str(datasets.input_hash(item.image)), "image_path": str(item.image),
                     "boxes": boxes})
    return rows


def _record_keys(path: Path) -> set[str]:
    keys = set()
    for raw in tf.data.TFRecordDataset(str(path)):
        example = tf.train.Example.FromString(raw.numpy())
        keys.add(example.features.feature["image/source_id"].bytes_list.value[0].decode())
    return keys


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    items = datasets.generate_shapes(root / "images", 42, seed=5)
    train_items, eval_items = items[:32], items[32:]
    eval_file = root / "heldout" / "eval.jsonl"
    eval_file.parent.mkdir()
    lines = [json.dumps(datasets.prodigy_record(item, item.image.name)) for item in eval_items]
    eval_file.write_text("\n".join(lines[:3] + ['{"answer": "accept", "not": "a record"'] + lines[3:]) + "\n")
    config = make_workspace(root / "ws", items, steps=150, eval_fraction=0.2, versions=5, checkpoints=5,
                            gate=f'eval_export = "{eval_file}"')
    cfg = load(config)
    # The annotator also labelled one held-out image in the training export: it must only ever be evaluated.
    training = _accepted(train_items + eval_items[:1])
    worker = Worker(cfg.work_dir / "logs" / "worker.log")
    Ledger(cfg.ledger_path).close()  # the daemon's tables, as `odal status` expects them
    history = History(cfg.ledger_path)
    outcomes, records, status = [], [], {}

    def round_(cfg, accepted):
        outcome = run_round(cfg, history, accepted, len(outcomes) + 1, LABELS, worker)
        assert outcome.state in ("published", "held_back"), outcome.error
        round_dir = cfg.work_dir / "rounds" / str(outcome.round_id)
        records.append({split: _record_keys(round_dir / f"{split}.record") for split in ("train", "eval")})
        outcome.versions_after = sorted(publish.version_dirs(cfg.base_path))
        outcomes.append(outcome)
        return outcome

    try:
        round_(cfg, training)
        round_(dataclasses.replace(cfg, gate_tolerance=1.0), training)
        round_(dataclasses.replace(cfg, steps_per_round=80), _accepted(train_items, wrong=True))
        rolled = rollback(cfg, 2)
        # No training steps: what round 4 evaluates is exactly the weights it started from.
        round_(dataclasses.replace(cfg, steps_per_round=0, gate_tolerance=-1.0), training)
        status["json"] = json.loads(odal_cli("status", "--workspace", str(config.parent), "--json").stdout)
        status["text"] = odal_cli("status", "--workspace", str(config.parent)).stdout
        foreign = cfg.base_path / "3"  # a version odal cannot read (not a SavedModel of this model)
        (foreign / "variables").mkdir(parents=True)
        (foreign / "saved_model.pb").write_bytes(b"not a graph")
        (foreign / "variables" / "variables.index").write_bytes(b"not an index")
        round_(dataclasses.replace(cfg, steps_per_round=5), training)
        rounds = history.rounds(10)
    finally:
        worker.stop()
        history.close()
    return {"cfg": cfg, "outcomes": outcomes, "rounds": rounds, "records": records, "status": status,
            "rolled": rolled, "eval_keys": {str(datasets.input_hash(i.image)) for i in eval_items},
            "train_keys": {str(datasets.input_hash(i.image)) for i in train_items}}


def test_the_first_version_is_published_whatever_its_quality(gated):
    first = gated["outcomes"][0]
    assert (first.state, first.version) == ("published", 1)
    assert first.gate["passed"] and first.gate["served"] is None and first.gate["served_version"] is None
    assert first.gate["metric"] == "mAP@0.5" and first.gate["candidate"] == first.metrics["mAP@0.5"]


def test_candidate_and_served_version_are_measured_on_the_same_images_with_the_same_numbers(gated):
    """Each round measures the served version again on the fixed eval set: exactly the numbers (every metric and
    the eval loss) of the round that made it (same weights, same images, same evaluator).  Measured on other
    images, or with other weights, they would differ."""
    first, second, third, fourth = gated["outcomes"][:4]
    assert (second.state, second.version) == ("published", 2)
    assert second.gate["served_version"] == 1 and second.gate["served_metrics"] == first.metrics
    assert third.gate["served_version"] == 2 and third.gate["served_metrics"] == second.metrics
    assert fourth.gate["served_version"] == 1 and fourth.gate["served_metrics"] == first.metrics
    assert first.metrics["loss"] != second.metrics["loss"]  # the numbers do tell the models apart
    assert second.gate["candidate"] == second.metrics["mAP@0.5"]
    assert gated["records"][0]["eval"] == gated["records"][1]["eval"], gated["records"][:2]  # the fixed set
    # Evaluating version 1 inside round 2's session must not leave its weights there: version 2 is round 2's.
    v1 = tf.train.load_checkpoint(str(gated["cfg"].base_path / "1" / "variables" / "variables"))
    v2_path = Path(gated["rolled"]["moved_to"]) / "variables" / "variables"  # rolled back in round 4
    v2 = tf.train.load_checkpoint(str(v2_path))
    names = [name for name, shape in tf.train.list_variables(str(v2_path)) if len(shape) >= 2]  # the kernels
    assert names and all(v1.get_tensor(n).shape == v2.get_tensor(n).shape for n in names)
    assert sum(not np.array_equal(v1.get_tensor(n), v2.get_tensor(n)) for n in names) > len(names) // 2


def test_a_genuinely_worse_candidate_is_held_back_at_the_default_tolerance(gated):
    """Round 3 learns wrong labels and boxes: it must lose to version 2, which learned the right ones."""
    _, second, third = gated["outcomes"][:3]
    assert second.gate["candidate"] > 0.15, f"version 2 should have learned the shapes: {second.gate}"
    assert (third.state, third.version) == ("held_back", None) and third.gate["tolerance"] == 0.0
    assert third.gate["served_version"] == 2 and third.gate["candidate"] < third.gate["served"]
    assert third.gate["served"] == second.gate["candidate"]


def test_after_a_rollback_the_gate_compares_with_what_serves_and_training_goes_on_from_the_held_back_round(gated):
    first, _, third, fourth = gated["outcomes"][:4]
    assert gated["rolled"]["serving"] == 1
    assert (fourth.state, fourth.version) == ("held_back", None)
    assert fourth.gate["served_version"] == 1, "compared against what serves after the rollback, not version 2"
    assert fourth.gate["served"] == first.gate["candidate"] and not fourth.gate["passed"]
    assert fourth.versions_after == [1], "version 1 still serves; nothing new"
    assert not list(gated["cfg"].base_path.glob(".staging-*")), "a held-back export was left behind"
    # Round 4 starts from the held-back round 3's weights (not round 2's, nor the versions evaluated in round 3).
    by_id = {r["id"]: r for r in gated["rounds"]}
    assert by_id[fourth.round_id]["global_step"] == by_id[third.round_id]["global_step"]
    assert fourth.metrics == third.metrics and fourth.metrics != gated["outcomes"][1].metrics


def test_status_shows_the_held_back_round_with_both_numbers(gated):
    fourth = gated["outcomes"][3]
    rounds = {r["id"]: r for r in gated["status"]["json"]["rounds"]}
    gate = rounds[fourth.round_id]["gate"]
    assert rounds[fourth.round_id]["state"] == "held_back"
    assert {k: gate[k] for k in ("metric", "candidate", "served", "passed")} == {
        "metric": "mAP@0.5", "candidate": round(fourth.gate["candidate"], 4), "served": round(fourth.gate["served"], 4),
        "passed": False}
    text = gated["status"]["text"]
    assert f"held {fourth.gate['candidate']:.3f} < {fourth.gate['served']:.3f}" in text
    assert f"round {fourth.round_id} held back" in text and "eval set   10 images" in text


def test_the_fixed_eval_set_is_evaluated_every_round_and_never_trained_on(gated):
    eval_keys, train_keys = gated["eval_keys"], gated["train_keys"]
    for records in gated["records"]:
        assert records["eval"] == eval_keys, "the whole eval set (its bad line left out), nothing else"
        assert not records["train"] & eval_keys, "an eval-set image in the training records"
        assert records["train"] == train_keys
    gate = gated["outcomes"][0].gate
    assert gate["eval_set"]["set_aside"] == 1 and gate["eval_images"] == 10
    assert "fewer than 50 boxes per class" in gate["warning"]


def test_a_served_version_that_cannot_be_evaluated_does_not_block_publishing(gated):
    """A version folder odal cannot read as this model (changed architecture, foreign files) is no reason to hold
    every later round back: the round publishes, saying why it was not compared."""
    fifth = gated["outcomes"][4]
    assert (fifth.state, fifth.version) == ("published", 4) and fifth.versions_after == [1, 3, 4]
    assert fifth.gate["passed"] and fifth.gate["served"] is None and fifth.gate["served_version"] == 3
    assert "served version 3 could not be evaluated" in fifth.gate["reason"]
    assert fifth.gate["candidate"] == fifth.metrics["mAP@0.5"] is not None
