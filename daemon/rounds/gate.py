"""The publish gate: is a round's candidate model good enough to replace the version that serves?

Each round evaluates the candidate and the served version on the same eval images with the same evaluator (in the
worker, ``odal.daemon.worker.served``); :func:`decide` turns the two sets of metrics into the round's recorded
gate: ``{"metric", "candidate", "served", "passed", ...}``.  A candidate that is worse than the served version by
more than ``[gate] tolerance`` on ``[gate] metric`` is held back (TFX's "not blessed": an outcome, not an error);
the next round trains on from it.  Nothing serving yet (the first version, or everything rolled back): published.

Pure functions, no TensorFlow: the worker decides with them, the daemon and ``odal status`` read what they return.
"""

from __future__ import annotations

import math
from collections import Counter

# odal's metric name -> the OD API's COCO metric key.  All are "higher is better" (the loss is not a gate metric).
METRICS = {
    "mAP": "DetectionBoxes_Precision/mAP",
    "mAP@0.5": "DetectionBoxes_Precision/mAP@.50IOU",
    "mAP@0.75": "DetectionBoxes_Precision/mAP@.75IOU",
    "AR@100": "DetectionBoxes_Recall/AR@100",
}

# Below this many ground-truth boxes of a class, the eval set is too small for its AP to separate models: AP is
# built from recall over the class's n boxes, a proportion whose sampling error is about 0.5/sqrt(n) at worst
# (+-0.07 at 50 boxes, +-0.16 at 10), so differences smaller than that between rounds, or between a candidate and
# the served version, are mostly which images happen to be in the eval set.
MIN_EVAL_BOXES_PER_CLASS = 50


def summarize(raw: dict | None) -> dict | None:
    """The round's metrics under odal's names (and the eval loss) from the OD API's raw eval dict."""
    if not raw:
        return None
    out = {name: raw.get(key) for name, key in METRICS.items()}
    out["loss"] = raw.get("Loss/total_loss")
    return out


def decide(metric: str, tolerance: float, candidate: dict | None, served: dict | None,
           served_version: int | None, served_error: str | None = None) -> dict:
    """The gate of one round.  ``candidate`` / ``served``: raw eval dicts (None when not evaluated);
    ``served_version``: the version serving now (None: nothing serves); ``served_error``: why it could not be
    evaluated.  Published unless both were measured and ``candidate < served - tolerance``."""
    key = METRICS[metric]
    value = _number(candidate, key)
    gate = {"metric": metric, "candidate": value, "served": None, "passed": True, "served_version": served_version,
            "tolerance": tolerance}
    if served_version is None:
        gate["reason"] = "first version: nothing serves yet"
    elif value is None:
        gate["reason"] = "no eval images: published without a comparison"
    elif served_error is not None or _number(served, key) is None:
        gate["reason"] = (f"served version {served_version} could not be evaluated "
                          f"({served_error or 'no metrics'}): published without a comparison")
    else:
        gate["served"] = _number(served, key)
        gate["passed"] = value >= gate["served"] - tolerance
        relation = ">=" if gate["passed"] else "<"
        gate["reason"] = (f"{metric} {value:.3f} {relation} served version {served_version}'s {gate['served']:.3f}"
                          f" - tolerance {tolerance:g}")
    return gate


def _number(raw: dict | None, key: str) -> float | None:
    value = (raw or {}).get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return None
    return float(value)


def eval_set_warning(eval_annotations: list[dict], labels: list[str]) -> str | None:
    """Why mAP on these eval annotations is not meaningful yet (None when every class has enough boxes)."""
    boxes = Counter(box["label"] for annotation in eval_annotations for box in annotation["boxes"])
    short = [label for label in labels if boxes[label] < MIN_EVAL_BOXES_PER_CLASS]
    if not short:
        return None
    parts = [f"{label} {boxes[label]} boxes (AP +-{0.5 / math.sqrt(boxes[label]):.2f})" if boxes[label]
             else f"{label} no box (AP not measured)" for label in short]
    return (f"eval set too small for a meaningful mAP ({len(eval_annotations)} images): {'; '.join(parts)}. "
            f"A class's AP from n boxes is measured to about +-0.5/sqrt(n), so with fewer than "
            f"{MIN_EVAL_BOXES_PER_CLASS} boxes per class smaller differences are noise")
