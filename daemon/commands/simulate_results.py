"""``DIR/results.json``: everything ``odal simulate`` measured, written atomically after each step.

Layout::

    {"format": 1, "settings": {...the command's options...},
     "repeats": {"0": {"test": [keys], "seed": [keys], "pool": N}},
     "runs": {"uncertainty/0": {"strategy", "repeat", "done", "pending": {"round", "added"} | null,
                                "rounds": [{"round", "labels", "added", "version", "mAP", "mAP@0.5",
                                            "per_class": {label: {"AP", "AP@0.5"}}, "seconds", "train_seconds"}]}},
     "full": {"labels", "done", "rounds": [...]}}          # the reference: every pool image labelled

A run's ``pending`` is the selection of its next round, recorded before that round's images are "annotated": an
interrupted run redoes that round with the same images.  A rerun with other settings is refused (naming them),
so one results file never mixes two experiments.
"""

from __future__ import annotations

import json
from pathlib import Path

from odal.common.errors import ConfigError
from odal.daemon.system.atomic import atomic_write_text

FORMAT = 1


class Results:
    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
            old = self.data.get("settings", {})
            changed = sorted(key for key in set(old) | set(settings) if old.get(key) != settings.get(key))
            if changed:
                raise ConfigError(f"{self.path} holds a simulation with other settings ({', '.join(changed)}: "
                                  + "; ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                                  + "); choose another --out or the same options")
        else:
            self.data = {"format": FORMAT, "settings": settings, "repeats": {}, "runs": {}, "full": None}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    # -- splits -----------------------------------------------------------------------------------------------
    def repeat(self, number: int) -> dict | None:
        return self.data["repeats"].get(str(number))

    def set_repeat(self, number: int, test: list[str], seed: list[str], pool: int) -> None:
        self.data["repeats"][str(number)] = {"test": test, "seed": seed, "pool": pool}
        self.save()

    # -- runs -------------------------------------------------------------------------------------------------
    def run(self, strategy: str, repeat: int) -> dict:
        key = f"{strategy}/{repeat}"
        if key not in self.data["runs"]:
            self.data["runs"][key] = {"strategy": strategy, "repeat": repeat, "done": False, "pending": None,
                                      "rounds": []}
        return self.data["runs"][key]

    def full(self) -> dict:
        if self.data.get("full") is None:
            self.data["full"] = {"done": False, "pending": None, "rounds": []}
        return self.data["full"]


def labelled(run: dict) -> list[str]:
    """The keys labelled after the run's last finished round."""
    return [key for record in run["rounds"] for key in record["added"]]


def round_record(number: int, labels: int, added: list[str], version: int | None, raw: dict | None,
                 per_class: dict | None, seconds: float, train_seconds: float | None) -> dict:
    """One finished round, from the worker's raw COCO metrics on the test set (and the per-class APs)."""
    raw = raw or {}
    return {
        "round": number, "labels": labels, "added": added, "version": version,
        "mAP": _metric(raw, "DetectionBoxes_Precision/mAP"), "mAP@0.5": _metric(raw, "DetectionBoxes_Precision/mAP@.50IOU"),
        "per_class": per_class or {}, "seconds": round(seconds, 1),
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
    }


def _metric(raw: dict, key: str) -> float | None:
    value = raw.get(key)
    if not isinstance(value, (int, float)) or value != value:  # NaN: no box of any class to measure
        return None
    return round(float(value), 4)
