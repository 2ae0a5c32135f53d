"""Scoring the active-learning queue: a few pending images at a time, asked of the served model.

A loop step of the daemon (called while no round runs).  Network I/O, bounded: one pipelined ``predict_many`` of at
most ``limit`` images (each request under the client's deadline); a serving error (server down, no version yet)
scores nothing and the next call tries again.  Images are read only through odal.daemon.sources.safe_files
(regular files inside the data dir, bounded bytes) and decoded by odal.daemon.sources.images (pixels bounded from
the header, shrunk to at most 1024 a side); a refused or broken image is marked with its error, logged once, and
not read again until the file changes.  No TensorFlow: the model is asked through odal.serving.client.
"""

from __future__ import annotations

import hashlib

from odal.common.hashing import content_hash
from odal.common.images import ImageData
from odal.common.uncertainty import uncertainty
from odal.daemon.sources import safe_files
from odal.daemon.sources.images import pixels_for_scoring
from odal.daemon.store.queue import ActiveQueue
from odal.daemon.system import log as logs
from odal.serving.errors import ServingError

log = logs.get("odal.active_queue")


def score_pending(queue: ActiveQueue, client, model_name: str, limit: int = 16, concurrency: int = 4) -> int:
    """Score at most ``limit`` pending images of ``queue`` with ``client`` (an odal.serving.client.ServingClient);
    returns how many were scored."""
    images = read_pending(queue, limit)
    if not images:
        return 0
    try:
        found = client.predict_many(model_name, [image.pixels for image in images], concurrency=concurrency)
    except ServingError as error:
        log.info("active_queue_scoring_paused", error=str(error), pending=len(images))
        return 0
    queue.record_scores([(image.path, hashlib.sha256(image.data).hexdigest(), str(content_hash(image.data)),
                          uncertainty(detections.scores), int(detections.model_version))
                         for image, detections in zip(images, found)])
    return len(images)


def read_pending(queue: ActiveQueue, limit: int) -> list[ImageData]:
    """The next ``limit`` pending images read for scoring (pixels shrunk to at most 1024 a side); an image that is
    gone, refused or undecodable is marked with its error and logged once."""
    images = []
    for path in queue.pending(limit):
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
