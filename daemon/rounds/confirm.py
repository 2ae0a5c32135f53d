"""Confirm a published version serves: the server reports it AVAILABLE, and a Predict pinned to it answers.

If it does not within ``serving.confirm_timeout_seconds`` (it failed to load, or answers wrongly), the version is
moved out of the numbered namespace (quarantined) so the server keeps serving the previous one.
"""

from __future__ import annotations

import time
from pathlib import Path

from odal.daemon.system import log as logs
from odal.daemon.config import Config
from odal.common.errors import PublishError
from odal.daemon.rounds import publish
from odal.daemon.store.history import History

log = logs.get("odal.confirm")


class Confirmer:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, version: int, path: Path, history: History, sample_image: str | None) -> dict:
        """Returns {"latency_ms": ...} when version ``version`` serves; raises PublishError after quarantining it."""
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
            reason = f"{error.code}: {error.message}"
            where = publish.quarantine(cfg.base_path, version, history, reason)
            log.error("version_quarantined", version=version, reason=reason, moved_to=str(where),
                      seconds=round(time.monotonic() - started, 2))
            raise PublishError(f"version {version} did not serve ({reason}); quarantined at {where}") from None
        finally:
            client.close()
        history.set_version_state(version, "confirmed")
        log.info("version_confirmed", version=version, address=cfg.serving_address, detections=int(found.num),
                 predict_ms=round(latency_ms, 1), seconds=round(time.monotonic() - started, 2))
        return {"latency_ms": latency_ms}


def _blank():
    import numpy as np

    return np.full((64, 64, 3), 127, dtype=np.uint8)
