"""The served model as the recipe sees it: detections for a batch of images, or None when it cannot answer.

One :class:`~odal.serving.client.ServingClient` (one gRPC channel); a batch is sent with ``predict_many``, several
requests in flight at once.

* **A model still loading** (the server answers, but has no AVAILABLE version yet: just started, or the first
  version is being loaded): before the first batch the predictor waits for it, at most ``wait_seconds``, and says
  so in one log line, so that the first images do not come without suggestions.
* **A server that cannot answer** (down, or no version after the wait): ONE warning is logged, the caller gets
  None (images are shown without suggestions), and the model is asked again after a backoff that starts at
  ``retry_first`` seconds and doubles up to ``retry_max``, so suggestions come back by themselves soon after a
  version is served.
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
                 wait_seconds: float = 60.0, retry_first: float = 1.0, retry_max: float = 30.0) -> None:
        if wait_seconds < 0 or retry_first < 0 or retry_max < retry_first:
            raise ValueError("wait_seconds and retry_first must be >= 0, retry_max >= retry_first")
        self.address, self.model = address, model
        self.concurrency = concurrency
        self.wait_seconds = wait_seconds
        self.retry_first, self.retry_max = retry_first, retry_max
        self.client = ServingClient(address, timeout=timeout, retries=1)
        self.warned = False
        self._waited = False
        self._retry = retry_first
        self._down_until: float | None = None
        self.last_version: int | None = None

    def wait_for_model(self) -> int | None:
        """Wait (at most ``wait_seconds``) while the server answers but has no AVAILABLE version of the model;
        returns the available version, None when there is none (the server is down: no wait) or the wait ran out."""
        self._waited = True
        try:
            statuses = self.client.model_status(self.model, timeout=5.0)
            available = [s.version for s in statuses if s.state == "AVAILABLE"]
            if available or self.wait_seconds == 0:
                return max(available, default=None)
            state = ", ".join(f"version {s.version} {s.state}" for s in statuses)
        except ServingError as error:
            if error.code != "NOT_FOUND" or self.wait_seconds == 0:  # not up (or other trouble): no wait
                return None
            state = error.message
        log.info("odal: model %r at %s is not loaded yet (%s); waiting up to %gs for it before the first images",
                 self.model, self.address, state, self.wait_seconds)
        started = time.monotonic()
        try:
            version = self.client.wait_until_available(self.model, timeout=self.wait_seconds)
        except ServingError as error:
            log.info("odal: model %r still not available after %gs (%s)", self.model, self.wait_seconds, error)
            return None
        log.info("odal: model %r version %d available after %.1fs", self.model, version, time.monotonic() - started)
        return version

    def detect_many(self, images: Sequence[np.ndarray]) -> list[Detections] | None:
        """Detections of each HxWx3 uint8 image, in order; None while the model cannot answer."""
        if not images:
            return None
        if not self._waited:
            self.wait_for_model()
        if self._down_until is not None and time.monotonic() < self._down_until:
            return None
        try:
            found = self.client.predict_many(self.model, images, concurrency=self.concurrency)
        except ServingError as error:
            self._down_until = time.monotonic() + self._retry
            if not self.warned:
                self.warned = True
                log.warning("odal: no suggestions: model %r at %s cannot answer (%s); images are shown without "
                            "boxes, and the model is asked again after %gs, then less often (at most every %gs)",
                            self.model, self.address, error, self._retry, self.retry_max)
            else:
                log.debug("model still unavailable: %s", error)
            self._retry = min(max(self._retry * 2, self.retry_first), self.retry_max)
            return None
        if self._down_until is not None:
            self._down_until, self._retry = None, self.retry_first
            log.info("odal: model %r at %s answers again (version %s)", self.model, self.address,
                     found[0].model_version)
        self.last_version = found[-1].model_version
        return found

    def close(self) -> None:
        self.client.close()
