"""What the served version's evaluation can reuse: the eval step's outputs of the weights it serves.

The version that serves in round N is usually round N-1's candidate, and this worker computed that candidate's
eval-step outputs (losses, detections) on round N-1's eval images an evaluation ago.  Round N's eval split holds
those images again plus a few new ones, so the served evaluation only needs to run the model on the new ones; the
rest of the evaluation (prepare_eval_dict, the COCO evaluators, the TensorBoard images) runs on every image as
before, so the metrics are those of a full evaluation (``tests/test_served_cache.py``).

An output is reused only when both keys match exactly:

* the weights: the digest of the served version's ``variables/`` files (every byte), against the digest of the
  export written from the weights the outputs were computed with.  Another version served, a rollback, a version
  rewritten in place: another digest, a full evaluation.  A new worker (restart) starts empty.
* the element: the digest of every tensor of the eval element (image, original image, shapes, boxes, classes, key),
  so a changed image or annotation is computed again.

The cache lives in one session (one model, one traced eval step); it holds the outputs of one weights identity at
most ``MAX_BYTES`` of tensors (beyond that, elements are computed, not cached) and, for the elements it misses,
the served weights themselves, so they are assigned from memory instead of restored from disk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

MAX_BYTES = 256 * 1024 * 1024  # cached eval-step outputs of one version (~60 KB an image on the demo model)
MAX_RECORD_BYTES = 64 * 1024 * 1024  # an eval record file above this is decoded anew for each evaluation


def variables_digest(saved_model_dir: Path) -> str:
    """A digest of every file of a SavedModel's ``variables/`` (names and bytes)."""
    digest = hashlib.blake2b(digest_size=32)
    folder = Path(saved_model_dir) / "variables"
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0")
        _feed(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def _feed(digest, path: Path) -> None:
    """Add a file's bytes to ``digest``, a few MiB at a time."""
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)


def element_digest(features: dict, labels: dict) -> bytes:
    """A digest of every tensor of one eval element (its names, dtypes, shapes and values)."""
    digest = hashlib.blake2b(digest_size=32)
    for part, tensors in ((b"f", features), (b"l", labels)):
        for name in sorted(tensors):
            value = np.asarray(tensors[name])
            digest.update(part + name.encode() + b"\0" + str(value.dtype).encode() + repr(value.shape).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.digest()


def _nbytes(outputs) -> int:
    losses, detections = outputs
    return sum(int(np.prod(t.shape)) * t.dtype.size for t in [*losses.values(), *detections.values()])


class Outputs:
    """Eval-step outputs (losses, detections) by element digest, up to ``max_bytes``."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.by_element: dict[bytes, tuple[dict, dict]] = {}
        self.max_bytes, self.bytes = max_bytes, 0

    def add(self, key: bytes, outputs: tuple[dict, dict]) -> None:
        size = _nbytes(outputs)
        if key not in self.by_element and self.bytes + size <= self.max_bytes:
            self.by_element[key] = outputs
            self.bytes += size

    def get(self, key: bytes):
        return self.by_element.get(key)


class ServedCache:
    """The eval-step outputs and the weights of the one version the next served evaluation will likely meet."""

    def __init__(self) -> None:
        self.identity: str | None = None  # variables_digest of the export these weights and outputs belong to
        self.outputs = Outputs()
        self.weights: list[np.ndarray] | None = None

    def bind(self, identity: str, outputs: Outputs, weights: list[np.ndarray]) -> None:
        """From now on, ``outputs`` and ``weights`` are those of the export whose variables digest is ``identity``."""
        self.identity, self.outputs, self.weights = identity, outputs, weights

    def clear(self) -> None:
        self.identity, self.outputs, self.weights = None, Outputs(), None

    def matches(self, identity: str) -> bool:
        return self.identity is not None and self.identity == identity


def file_digest(path: Path) -> str:
    """A digest of a file's bytes."""
    digest = hashlib.blake2b(digest_size=32)
    _feed(digest, path)
    return digest.hexdigest()


class DecodedElements:
    """The decoded elements of the last eval record file read (by its bytes), for the next evaluation of the same
    file: the served version's, right after the candidate's.  Reading the file again costs a new tf.data iterator
    (which instantiates the OD API's input functions again) and the decoding: about half of a demo evaluation.
    Kept only when the file is at most ``MAX_RECORD_BYTES`` and its elements at most ``max_bytes`` of tensors."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.identity: str | None = None  # what the dataset was built from, and the record file's digest
        self.elements: list | None = None
        self.reads = 0  # how many times a dataset was read (for tests and benchmarks)

    def of(self, record: Path, dataset, built_from: str):
        """The elements of ``dataset`` (which reads ``record``): kept ones if the file's bytes are those read last."""
        if os.stat(record).st_size > MAX_RECORD_BYTES:
            self.identity = self.elements = None
            return self._reading(None, dataset)
        identity = built_from + "\0" + file_digest(record)
        if self.elements is not None and self.identity == identity:
            return iter(self.elements)
        return self._reading(identity, dataset)

    def _reading(self, identity: str | None, dataset):
        self.identity = self.elements = None
        self.reads += 1
        kept, total = ([] if identity is not None else None), 0
        for element in dataset:
            if kept is not None:
                total += sum(np.asarray(t).nbytes for part in element for t in part.values())
                kept = kept if total <= self.max_bytes else None
                if kept is not None:
                    kept.append(element)
            yield element
        if kept is not None:  # only a split read to its end
            self.identity, self.elements = identity, kept
