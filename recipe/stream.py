"""The recipe's stream: images of a folder -> (skip answered) -> model suggestions -> ordered tasks, prefetched.

``order``:

* ``uncertainty`` (default): images the daemon's active-learning queue has scored come first, most uncertain
  first (rows scored by an older version than the queue's newest are stale and not used for ranking); the other
  images follow in file order.  Every batch is also scored on the fly and sorted by its live uncertainty, so an
  empty or stale queue (or no ``work_dir``) still puts the most informative images of each batch first.
* ``file``: sorted by path.  ``random``: shuffled with ``seed``.

A background thread reads images, asks the model, builds and hashes tasks, and keeps at most ``prefetch`` of them
ready in a bounded queue, so Prodigy never waits on the model; when the model cannot answer the tasks come
without suggestions (one warning, see :mod:`odal.recipe.predictor`).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from odal.common.images import image_files
from odal.recipe.tasks import add_detections, make_task, own_hashes, read_image

log = logging.getLogger("odal.recipe")

ORDERS = ("uncertainty", "file", "random")
Hasher = Callable[[dict, bytes], dict]


@dataclass(frozen=True)
class StreamOptions:
    """Validated once, when built."""

    source: Path
    labels: tuple[str, ...]  # the whole label map, by id: the model's class k is labels[k - 1]
    threshold: float = 0.3
    order: str = "uncertainty"
    batch_size: int = 10
    data_dir: Path | None = None
    work_dir: Path | None = None  # the daemon's work dir: its queue orders images, its ledger says what is answered
    prefetch: int = 32
    seed: int = 0
    shown: tuple[str, ...] | None = None  # the labels suggested to the annotators (None: all)

    def __post_init__(self) -> None:
        if not Path(self.source).is_dir():
            raise ValueError(f"source {self.source} is not a folder of images")
        if not self.labels:
            raise ValueError("the label map has no labels")
        if self.shown is not None and not set(self.shown) <= set(self.labels):
            raise ValueError(f"labels {sorted(set(self.shown) - set(self.labels))} are not in the label map")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], not {self.threshold}")
        if self.batch_size < 1 or self.prefetch < 1:
            raise ValueError("batch_size and prefetch must be >= 1")


def list_images(source: Path) -> list[Path]:
    """Every image below ``source`` (hidden files and folders skipped), resolved, sorted by path."""
    return sorted(path.resolve() for path in image_files(source))


def ordered_paths(files: Sequence[Path], order: str, seed: int = 0,
                  ranked: Sequence[dict] = ()) -> list[Path]:
    """``files`` in the stream's order; ``ranked`` are queue rows (``path``, ``uncertainty``, ``scored_version``)."""
    files = list(files)
    if order == "file":
        return files
    if order == "random":
        random.Random(seed).shuffle(files)
        return files
    newest = max((r["scored_version"] for r in ranked if r["scored_version"] is not None), default=None)
    present = set(files)
    first = [Path(r["path"]) for r in ranked
             if r["uncertainty"] is not None and r["scored_version"] == newest and Path(r["path"]) in present]
    chosen = set(first)
    return first + [p for p in files if p not in chosen]


def queue_state(work_dir: Path | None) -> tuple[list[dict], set[str], set[str], Path | None]:
    """(ranked queue rows, answered input hashes, answered image paths, daemon data dir) of a daemon's work dir."""
    if work_dir is None:
        return [], set(), set(), None
    from odal.daemon.store.queue_query import QueueQuery

    try:
        with QueueQuery.reader(Path(work_dir)) as active:
            hashes, paths = active.answered()
            try:
                rows = active.next_images(10**9)
            except Exception as error:  # noqa: BLE001 - no queue table: the daemon runs without one
                log.info("odal: no active-learning queue in %s (%s); scoring on the fly", work_dir, error)
                rows = []
            return rows, hashes, paths, active.data_dir
    except Exception as error:  # noqa: BLE001 - never block the annotator on the daemon's work dir
        log.warning("odal: cannot read the daemon's ledger in %s (%s); not skipping answered images, scoring on "
                    "the fly", work_dir, error)
        return [], set(), set(), None


class Prefetcher:
    """Iterate over prepared tasks; a background thread keeps up to ``size`` ready. ``close()`` stops it."""

    _END = object()

    def __init__(self, produce: Callable[[Callable[[dict], bool]], None], size: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), name="odal-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce) -> None:
        try:
            produce(self._put)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(error)
        finally:
            self._put(self._END)

    def __iter__(self) -> Iterator[dict]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def build_stream(options: StreamOptions, predictor, hasher: Hasher = own_hashes) -> Prefetcher:
    """The stream of ``image_manual`` tasks (see the module docstring); ``predictor`` may be None (no model)."""
    ranked, answered_hashes, answered_paths, queue_data_dir = queue_state(options.work_dir)
    data_dir = options.data_dir or queue_data_dir or options.source
    files = [p for p in list_images(options.source) if str(p) not in answered_paths]
    paths = ordered_paths(files, options.order, options.seed, ranked)

    def produce(put: Callable[[dict], bool]) -> None:
        for start in range(0, len(paths), options.batch_size):
            batch = []
            for path in paths[start:start + options.batch_size]:
                try:
                    image = read_image(path)
                except (OSError, ValueError) as error:
                    log.warning("odal: skipping %s: %s", path, error)
                    continue
                task = hasher(make_task(image, data_dir), image.data)
                if str(task["_input_hash"]) not in answered_hashes:
                    batch.append((task, image))
            found = predictor.detect_many([image.pixels for _, image in batch]) if predictor and batch else None
            tasks = []
            for index, (task, image) in enumerate(batch):
                if found is not None:
                    task = hasher(add_detections(task, found[index], options.labels, options.threshold, options.shown),
                                  image.data)
                tasks.append(task)
            if options.order == "uncertainty":
                tasks.sort(key=lambda t: -t["meta"].get("uncertainty", 0.0))
            for task in tasks:
                if not put(task):
                    return

    return Prefetcher(produce, options.prefetch)
