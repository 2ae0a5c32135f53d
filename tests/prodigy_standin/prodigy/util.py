"""STAND-IN for ``prodigy.util``, for odal's recipe tests only: ``set_hashes`` and ``split_string``.

Real Prodigy hashes with MurmurHash; this stand-in uses SHA-1 but keeps the contract the recipe relies on: the
input hash depends only on the input keys (so the same image gives the same hash), the task hash also on the
task keys (spans), and existing hashes are kept unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json

INPUT_KEYS = ("text", "image", "html", "input")
TASK_KEYS = ("spans", "label", "options")


def _hash(value) -> int:
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "big", signed=True)


def set_hashes(task: dict, input_keys=INPUT_KEYS, task_keys=TASK_KEYS, ignore=(), overwrite: bool = False) -> dict:
    if overwrite or "_input_hash" not in task:
        task["_input_hash"] = _hash([task.get(key) for key in input_keys if key in task])
    if overwrite or "_task_hash" not in task:
        task["_task_hash"] = _hash([task["_input_hash"]] + [task.get(key) for key in task_keys if key in task])
    return task


def split_string(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else []
