"""Scoring the active-learning queue: a few pending images at a time, asked of the served model.

A loop step of the daemon (called while no round runs).  Network I/O, bounded: pipelined ``predict_many`` calls
of ``2 * concurrency`` images (each request under the client's deadline), at most ``limit`` images, and no new call
once ``max_seconds`` have passed; a serving error (server down, no version yet) stops the step and the next call
tries again.  Unanswered images come first; when none is pending, answered ones are scored for their embeddings
(the ``diverse`` strategy keeps away from them).  Each scored image stores its uncertainty, image score,
detections and embedding (odal.daemon.store.queue_order.score_values).  Images are read only through odal.daemon.sources.safe_files
(regular files inside the data dir, bounded bytes) and decoded by odal.daemon.sources.images (pixels bounded from
the header, shrunk to at most 1024 a side); a refused or broken image is marked with its error, logged once, and
not read again until the file changes.  No TensorFlow: the model is asked through odal.serving.client.
"""

from __future__ import annotations

import hashlib
import time

from odal.common.hashing import content_hash
from odal.common.images import ImageData
from odal.daemon.sources import safe_files
from odal.daemon.sources.images import pixels_for_scoring
from odal.daemon.store import queue_order
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.system import log as logs
from odal.serving.errors import ServingError

log = logs.get("odal.active_queue")


def score_pending(queue: ActiveQueue, client, model_name: str, limit: int = 16, concurrency: int = 4,
                  max_seconds: float | None = None) -> int:
    """Score at most ``limit`` pending images of ``queue`` with ``client`` (an odal.serving.client.ServingClient),
    starting no new chunk once ``max_seconds`` have passed (None: no time bound); returns how many were scored."""
    started = time.monotonic()
    done = 0
    while done < limit:
        scored = _score_chunk(queue, client, model_name, min(limit - done, 2 * max(concurrency, 1)), concurrency)
        done += scored
        if scored == 0 or (max_seconds is not None and time.monotonic() - started >= max_seconds):
            break
    return done


def _score_chunk(queue: ActiveQueue, client, model_name: str, limit: int, concurrency: int) -> int:
    images = read_pending(queue, limit)
    if not images:
        return 0
    try:
        found = client.predict_many(model_name, [image.pixels for image in images], concurrency=concurrency)
    except ServingError as error:
        log.info("active_queue_scoring_paused", error=str(error), pending=len(images))
        return 0
    queue.record_scores([(image.path, hashlib.sha256(image.data).hexdigest(), str(content_hash(image.data)),
                          int(detections.model_version),
                          queue_order.score_values(detections.scores, detections.classes, detections.embedding))
                         for image, detections in zip(images, found)])
    return len(images)


def read_pending(queue: ActiveQueue, limit: int) -> list[ImageData]:
    """The next ``limit`` pending images read for scoring (pixels shrunk to at most 1024 a side), unanswered ones
    first, then answered ones; an image that is gone, refused or undecodable is marked with its error and logged
    once."""
    images = []
    paths = queue.pending(limit)
    for path in paths + (queue.pending(limit - len(paths), answered=True) if len(paths) < limit else []):
        try:
            resolved, _st, data = safe_files.read_file(path, [queue.data_dir])
            pixels = pixels_for_scoring(data)
        except FileNotFoundError:
            queue.mark_error(path, "FileNotFoundError: gone")
            continue
        except Exception as error:  # noqa: BLE001 - refused, too large, undecodable, or a Pillow surprise
            queue.mark_error(path, f"{type(error).__name__}: {error}")
            log.warning("active_queue_image_unreadable", path=str(path), error=f"{type(error).__name__}: {error}")
            continue
        images.append(ImageData(resolved, data, pixels.shape[1], pixels.shape[0], pixels))
    return images
