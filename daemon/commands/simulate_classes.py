"""Per-class AP of a served version on the test set, for ``odal simulate`` on data with several classes.

The worker's evaluation reports the mAP over classes only (the OD API's per-category metrics need its own fork of
pycocotools), so each class's AP is measured here: the test images are sent to the served version through the
client (as the queue sends them), and pycocotools' COCOeval — the evaluator the OD API wraps — scores the
detections of one class at a time against the ground truth.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np


def per_class_ap(data, keys: list[str], detections: list) -> dict[str, dict[str, float | None]]:
    """``{label: {"AP": AP@[.5:.95], "AP@0.5": AP@.5}}`` of ``detections`` (client answers, in ``keys``' order);
    None for a class with no box in the test set."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = data.labels
    truth = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(labels, 1)]}
    found = []
    for image_id, (key, answer) in enumerate(zip(keys, detections), 1):
        item = data.items[key]
        truth["images"].append({"id": image_id, "width": item.width, "height": item.height})
        for label, x0, y0, x1, y1 in item.boxes:
            truth["annotations"].append({"id": len(truth["annotations"]) + 1, "image_id": image_id,
                                         "category_id": labels.index(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for box, cls, score in zip(np.asarray(answer.boxes), np.asarray(answer.classes), np.asarray(answer.scores)):
            ymin, xmin, ymax, xmax = (float(v) for v in box)
            found.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                          "bbox": [xmin * item.width, ymin * item.height, (xmax - xmin) * item.width,
                                   (ymax - ymin) * item.height]})
    out: dict[str, dict[str, float | None]] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = truth
        ground.createIndex()
        results = ground.loadRes(found) if found else None
        for number, label in enumerate(labels, 1):
            if not any(a["category_id"] == number for a in truth["annotations"]):
                out[label] = {"AP": None, "AP@0.5": None}
                continue
            if results is None:
                out[label] = {"AP": 0.0, "AP@0.5": 0.0}
                continue
            evaluation = COCOeval(ground, results, "bbox")
            evaluation.params.catIds = [number]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            out[label] = {"AP": round(max(float(evaluation.stats[0]), 0.0), 4),
                          "AP@0.5": round(max(float(evaluation.stats[1]), 0.0), 4)}
    return out
