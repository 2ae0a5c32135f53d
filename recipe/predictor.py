"""The served model as the recipe sees it: detections for a batch of images, or None when it cannot answer.

One :class:`~odal.serving.client.ServingClient` (one gRPC channel); a batch is sent with ``predict_many``, several
requests in flight at once.  When the server is down or has no version yet, ONE warning is logged, the caller gets
None (images are shown without suggestions), and the model is tried again after ``retry_seconds`` so that
suggestions come back by themselves once a version is served.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from odal.serving.client import Detections, ServingClient
from odal.serving.errors import ServingError

log = logging.getLogger("odal.recipe")


class Predictor:
    def __init__(self, address: str, model: str, *, concurrency: int = 4, timeout: float = 10.0,
                 retry_seconds: float = 30.0) -> None:
        self.address, self.model = address, model
        self.concurrency = concurrency
        self.retry_seconds = retry_seconds
        self.client = ServingClient(address, timeout=timeout, retries=1)
        self.warned = False
        self._down_until = 0.0
        self.last_version: int | None = None

    def detect_many(self, images: Sequence[np.ndarray]) -> list[Detections] | None:
        """Detections of each HxWx3 uint8 image, in order; None while the model cannot answer."""
        if not images or time.monotonic() < self._down_until:
            return None
        try:
            found = self.client.predict_many(self.model, images, concurrency=self.concurrency)
        except ServingError as error:
            self._down_until = time.monotonic() + self.retry_seconds
            if not self.warned:
                self.warned = True
                log.warning("odal: no suggestions: model %r at %s cannot answer (%s); images are shown without "
                            "boxes, and the model is asked again every %gs", self.model, self.address, error,
                            self.retry_seconds)
            else:
                log.debug("model still unavailable: %s", error)
            return None
        if self._down_until:
            self._down_until = 0.0
            log.info("odal: model %r at %s answers again (version %s)", self.model, self.address,
                     found[0].model_version)
        self.last_version = found[-1].model_version
        return found

    def close(self) -> None:
        self.client.close()
