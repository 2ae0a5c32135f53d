"""Scoring the active-learning queue: pending images in chunks, asked of the served model.

Run by odal.daemon.handlers.rescorer's thread (off the daemon's loop, while no round runs).  Network I/O,
bounded: pipelined ``predict_many`` calls of ``chunk`` images (each request under the client's deadline), at most
``limit`` images, and no new call once ``max_seconds`` have passed; a serving error (server down, no version yet)
stops the step and the next call tries again.  Unanswered images come first; when none is pending, answered ones
are scored for their embeddings (the ``diverse`` strategy keeps away from them).  Each scored image stores its
uncertainty, image score, detections and embedding (odal.daemon.store.queue_order.score_values).  Images are read
only through odal.daemon.sources.safe_files (regular files inside the data dir, bounded bytes) and decoded by
odal.daemon.sources.images (pixels bounded from the header, shrunk towards the model's input side when known, else
to at most 1024 a side; in a thread pool, ahead of the predicts); a refused or broken image is marked with its
error, logged once, and not read again until the file changes.  No TensorFlow: the model is asked through
odal.serving.client.
"""

from __future__ import annotations

import functools
import hashlib
import time
from concurrent.futures import Executor
from pathlib import Path

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
                  max_seconds: float | None = None, model_side: int | None = None, pool: Executor | None = None,
                  chunk: int | None = None, versions: set[int] | None = None) -> int:
    """Score at most ``limit`` pending images of ``queue`` with ``client`` (an odal.serving.client.ServingClient),
    starting no new chunk once ``max_seconds`` have passed (None: no time bound); returns how many were scored.
    ``model_side``: the model's input side (images are sent shrunk to it, see pixels_for_scoring); ``pool``: threads
    that read and decode the images while earlier ones are predicted; ``chunk``: images per predict batch and
    ledger transaction (default ``2 * concurrency``); ``versions`` gains the model versions that answered."""
    started = time.monotonic()
    done = 0
    size = chunk or 2 * max(concurrency, 1)
    while done < limit:
        asked = min(limit - done, size)
        scored = _score_chunk(queue, client, model_name, asked, concurrency, model_side, pool,
                              versions if versions is not None else set())
        done += scored
        if scored < asked or (max_seconds is not None and time.monotonic() - started >= max_seconds):
            break
    return done


def _score_chunk(queue: ActiveQueue, client, model_name: str, limit: int, concurrency: int,
                 model_side: int | None, pool: Executor | None, versions: set[int]) -> int:
    paths = pending_paths(queue, limit)
    if not paths:
        return 0
    images: list[ImageData] = []

    def pixels():  # decoded by the pool, ahead of the predicts
        for image in _readable(queue, paths, model_side, pool):
            images.append(image)
            yield image.pixels

    stream = pixels()
    try:
        found = client.predict_many(model_name, stream, concurrency=concurrency)
    except ServingError as error:
        for _pixels in stream:  # the rest still read: an unreadable image is marked once, server up or not
            pass
        log.info("active_queue_scoring_paused", error=str(error), pending=len(paths))
        return 0
    versions.update(int(detections.model_version) for detections in found)
    queue.record_scores([(image.path, hashlib.sha256(image.data).hexdigest(), str(content_hash(image.data)),
                          int(detections.model_version),
                          queue_order.score_values(detections.scores, detections.classes, detections.embedding))
                         for image, detections in zip(images, found)])
    return len(images)


def pending_paths(queue: ActiveQueue, limit: int) -> list[Path]:
    """The next ``limit`` pending images: unanswered ones first, then answered ones."""
    paths = queue.pending(limit)
    return paths + (queue.pending(limit - len(paths), answered=True) if len(paths) < limit else [])


def _load(data_dir: Path, model_side: int | None, path: Path) -> ImageData | Exception:
    """``path`` read (bounded, inside ``data_dir``) and decoded for scoring, or the error that stopped it."""
    try:
        resolved, _st, data = safe_files.read_file(path, [data_dir])
        pixels = pixels_for_scoring(data, model_side=model_side)
    except Exception as error:  # noqa: BLE001 - gone, refused, too large, undecodable, or a Pillow surprise
        return error
    return ImageData(resolved, data, pixels.shape[1], pixels.shape[0], pixels)


def _readable(queue: ActiveQueue, paths: list[Path], model_side: int | None, pool: Executor | None = None):
    """The images of ``paths`` that read and decode, in order (by ``pool`` when given); the others are marked."""
    load = functools.partial(_load, queue.data_dir, model_side)
    for path, loaded in zip(paths, pool.map(load, paths) if pool is not None else map(load, paths)):
        if isinstance(loaded, ImageData):
            yield loaded
        else:
            _unreadable(queue, path, loaded)


def _unreadable(queue: ActiveQueue, path: Path, error: Exception) -> None:
    if isinstance(error, FileNotFoundError):
        queue.mark_error(path, "FileNotFoundError: gone")
        return
    queue.mark_error(path, f"{type(error).__name__}: {error}")
    log.warning("active_queue_image_unreadable", path=str(path), error=f"{type(error).__name__}: {error}")


def read_pending(queue: ActiveQueue, limit: int, model_side: int | None = None) -> list[ImageData]:
    """The next ``limit`` pending images read for scoring (pixels shrunk to at most 1024 a side, or to
    ``model_side``), unanswered ones first, then answered ones; an image that is gone, refused or undecodable is
    marked with its error and logged once."""
    return list(_readable(queue, pending_paths(queue, limit), model_side))
