"""Confirm a published version serves: the server reports it AVAILABLE, and a Predict pinned to it answers.

Only asks the server: what follows (recording it confirmed, or quarantining a version that does not serve within
``serving.confirm_timeout_seconds``) is the orchestration's (odal.daemon.rounds.round).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from odal.daemon.system import log as logs

if TYPE_CHECKING:  # the configuration imports the rounds' gate and pipeline check
    from odal.daemon.config import Config

log = logs.get("odal.confirm")


class Confirmer:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, version: int, sample_image: str | None) -> str | None:
        """None when version ``version`` serves; else why not (the server's error code and message)."""
        from odal.serving.client import ServingClient
        from odal.serving.errors import ServingError

        cfg = self.cfg
        started = time.monotonic()
        client = ServingClient(cfg.serving_address, timeout=min(30.0, cfg.confirm_timeout_seconds))
        try:
            client.wait_until_available(cfg.model_name, version, timeout=cfg.confirm_timeout_seconds, poll=0.05)
            image = sample_image if sample_image and Path(sample_image).is_file() else _blank()
            asked = time.monotonic()
            found = client.predict(cfg.model_name, image, version=version)
            latency_ms = (time.monotonic() - asked) * 1000
            if found.model_version != version:
                raise ServingError("INTERNAL", f"version {found.model_version} answered a request pinned to {version}")
        except ServingError as error:
            return f"{error.code}: {error.message}"
        finally:
            client.close()
        log.info("version_confirmed", version=version, address=cfg.serving_address, detections=int(found.num),
                 predict_ms=round(latency_ms, 1), seconds=round(time.monotonic() - started, 2))
        return None


def _blank():
    import numpy as np

    return np.full((64, 64, 3), 127, dtype=np.uint8)
