"""Build and trace a round's model before the round: while the daemon waits for annotations.

A fresh worker's first round used to pay, after the annotations arrived, for building the model, tracing the train
step (about 20 s of a tiny model's first step), tracing evaluation and inference, and a whole SavedModel (15-26 s).
None of that depends on the annotations: only on the pipeline config and the class count.  A prewarm job does it
all on one generated image (records in a temporary folder): it builds the round's session, traces the train step
and runs it once (TensorFlow optimises a function's graph at its first call), then puts every variable back (no
weight moves, the global step stays; checked variable by variable, reported as ``undo``), runs the eval step once,
and writes one whole SavedModel of the untrained weights, which leaves the session's graph for later exports.
With ``job.template_dir`` (the daemon's: ``<base_path>/.odal-template``) that SavedModel is published there, in one
rename, as the model's template: ``odal serve`` loads it before version 1 arrives, never serving it, so version 1
(the same graph bytes) gets only its variables read (``odal.serving.template``).  Round 1 then reuses the session
(``session_reused``), and its export writes only the weights.  The daemon sends it when the worker starts (and again
after a worker is retired for memory: its successor builds the same graph bytes, so the template is left
"unchanged" and the server does not load it again); see ``Worker.prewarm`` in ``odal.daemon.rounds.worker_client``.

Job: ``odal.daemon.rounds.contracts.PrewarmJob``; answer: ``Prewarmed``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import numpy as np
import tensorflow as tf
from PIL import Image

from odal.daemon.rounds.contracts import PrewarmJob
from odal.daemon.system.atomic import publish_dir, remove_tree
from odal.daemon.worker import distribute, rounds, tf_private, throughput
from odal.daemon.worker import session as sessions
from odal.daemon.worker.tfrecords import write_records
from odal.serving.reuse import graph_bytes


def _sample_round(folder: Path) -> None:
    """A round folder with one generated 96x96 image holding one box of class 1, in both splits."""
    image = np.full((96, 96, 3), 90, np.uint8)
    image[24:72, 24:72] = 200
    path = folder / "sample.png"
    with io.BytesIO() as out:
        Image.fromarray(image).save(out, format="PNG")
        path.write_bytes(out.getvalue())
    box = {"label": "sample", "label_id": 1, "xmin": 0.25, "ymin": 0.25, "xmax": 0.75, "ymax": 0.75}
    with open(folder / "annotations.jsonl", "w", encoding="utf-8") as lines:
        for split in ("train", "eval"):
            lines.write(json.dumps({"input_hash": split, "image_path": str(path), "boxes": [box],
                                    "split": split}) + "\n")
    write_records(folder / "annotations.jsonl", folder)


def prewarm(job: PrewarmJob) -> dict:
    """The session for ``job``'s model, built and traced under its strategy; what was done and how long it took."""
    started = time.monotonic()
    dist = distribute.configure(job.distribute)  # the rounds' strategy: a child keeps the one it starts with
    with tempfile.TemporaryDirectory(prefix="odal-prewarm-") as tmp:
        folder = Path(tmp)
        _sample_round(folder)
        configs = sessions.load_configs(job.pipeline_config, job.label_map, job.num_classes,
                                        folder / "train.record", folder / "eval.record")
        sessions.adjustments(configs)
        timings = {}

        def build(session: sessions.ModelSession) -> None:
            mark = time.monotonic()
            session.trace_train(configs)
            timings["train_trace"] = time.monotonic() - mark
            if dist.strategy is None:  # under a strategy, evaluation runs a one-device copy, eagerly (session)
                mark = time.monotonic()
                found["undo"] = _first_train_call_undone(session, configs, folder / "before")
                timings["train_first_call"] = time.monotonic() - mark
                mark = time.monotonic()
                session.traced_eval(configs, session._dataset(configs, "eval"), session.global_step)  # noqa: SLF001
                tf_private.set_training(session.model)
                timings["eval_first_call"] = time.monotonic() - mark
            mark = time.monotonic()
            prefix = tf.train.Checkpoint(model=session.model).write(str(folder / "ckpt" / "ckpt"))
            out = folder / "export"
            if job.template_dir is not None:
                try:
                    out = _staging(job.template_dir)
                except OSError as error:  # a template is an optimisation: reported, the prewarm goes on
                    found["template"] = f"failed: {type(error).__name__}: {error}"
            try:
                session.export(prefix, out)
                timings["export"] = time.monotonic() - mark
                if "template" not in found and job.template_dir is not None:
                    found["template"] = _publish_template(out, job.template_dir)
            finally:
                shutil.rmtree(out, ignore_errors=True)  # gone once published

        found: dict = {}
        built = rounds.prewarmed_session(configs, build)
    return {"built": built, "seconds": time.monotonic() - started, "timings": timings, **found}


def _first_train_call_undone(session: sessions.ModelSession, configs: dict, folder: Path) -> dict[str, int]:
    """Run the traced train step once on the sample, then put back every variable it moved (model, optimiser,
    global step) from a checkpoint written just before.  TensorFlow optimises and instantiates a function's graph
    at its first call, not when it is traced: that call cost round 1 about 11 s more train time than round 2 on the
    tiny SSD (bench/results/latency.md).  The evaluation's first call has no variable to undo.

    Checked each time: every variable (weights, BatchNorm moving statistics, optimiser slots, global step) is
    compared, by a digest of its bytes, before the call, after it and after the undo.  One left moved fails the
    prewarm (round 1 then builds its own session, from the weights it would have had).  Returns the counts, for the
    Prewarmed answer: variables, moved by the call (all, trainable, moving statistics), left moved (0)."""
    variables = [*session.model.variables, *session.optimizer.variables(), session.global_step]
    before = _digests(variables)
    checkpoint = session.checkpoint.write(str(folder / "ckpt"))
    session._train_step(iter(session._dataset(configs, "train")), *throughput.call_args(1, 1, 1.0))  # noqa: SLF001
    called = _digests(variables)
    session.checkpoint.read(checkpoint).assert_consumed()
    left = [v.name for v, old, new in zip(variables, before, _digests(variables)) if old != new]
    if left:
        raise RuntimeError(f"the prewarm's train call was not undone: {len(left)} variables left moved: {left[:5]}")
    moved = [v for v, old, new in zip(variables, before, called) if old != new]
    trainable = {id(v) for v in session.model.trainable_variables}
    return {"variables": len(variables), "moved": len(moved), "moved_trainable": sum(id(v) in trainable for v in moved),
            "moved_moving": sum("moving_" in v.name for v in moved), "left": len(left),
            "global_step": int(session.global_step.numpy())}


def _digests(variables: list) -> list[bytes]:
    """A digest of each variable's value (compared, not kept: no copy of the weights)."""
    return [hashlib.blake2b(v.numpy().tobytes(), digest_size=16).digest() for v in variables]


def _staging(template_dir: Path) -> Path:
    """A folder name beside ``template_dir`` (same filesystem: published by a rename) that no server takes for a
    version, created by the export with the usual permissions; what a killed prewarm left there goes first."""
    template_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in template_dir.parent.glob(f"{template_dir.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return template_dir.parent / f"{template_dir.name}.staging-{os.getpid()}"


def _publish_template(staging: Path, template_dir: Path) -> str:
    """Make the complete SavedModel ``staging`` the model's template (serving/template.py), replacing an older
    one; an identical graph is left in place (the server keeps it loaded).  How it went, for the Prewarmed answer
    (a failure is reported, not raised)."""
    try:
        if (template_dir / "saved_model.pb").is_file() and graph_bytes(str(template_dir)) == graph_bytes(str(staging)):
            return "unchanged"  # the server's own reuse test (graph and assets): it keeps the loaded one
        remove_tree(template_dir)
        publish_dir(staging, template_dir)
        return "published"
    except OSError as error:
        return f"failed: {type(error).__name__}: {error}"
