"""A model's graph loaded before its first version: ``<base_path>/.odal-template``, loaded but never served.

A version whose ``saved_model.pb`` (and ``assets/``) equal a loaded version's gets only its variables read
(serving/reuse.py), but the first version of a model has nothing to reuse: ``tf.saved_model.load`` of a detector
(half a minute on a busy machine) made round 1 the slowest.  odal's worker builds the model while the daemon waits
for annotations and writes one whole SavedModel of its untrained weights; every later export of that worker is the
same graph with other variables.  The prewarm publishes that SavedModel, in one rename, as the hidden folder
``.odal-template`` beside the versions:

* it is not a version: its name is not an integer, so TF Serving's file-system source (``safe_strto64``) and
  ``discovery.list_versions`` ignore it; no status, label or request can name it;
* ``odal serve`` (with ``--reuse_loaded_graph``) loads it in a background thread when a poll or an inotify wake
  finds it new or changed (``Templates.poll``, called on the manager thread each poll), and keeps it loaded while
  the folder stays; a version of that graph arriving during the load waits for it instead of loading the graph
  again; a replaced template is loaded anew, a removed one is let go (versions built on it keep it alive);
* whether a version reuses it is decided, as for any loaded graph, by the graph bytes alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Iterable

from odal.serving.discovery import TEMPLATE_DIR
from odal.serving.reuse import Loader

log = logging.getLogger(__name__)


def _stamp(folder: str) -> tuple | None:
    """What identifies one published template folder (a new rename is a new folder), or None if there is no
    complete one (``saved_model.pb`` is written last)."""
    try:
        where = os.stat(folder)
        graph = os.stat(os.path.join(folder, "saved_model.pb"))
    except OSError:
        return None
    return where.st_ino, where.st_mtime_ns, graph.st_ino, graph.st_size, graph.st_mtime_ns


class Templates:
    """The templates of a set of base paths, loaded ahead into ``loader``'s reuse cache."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._held: dict[str, tuple[tuple, object]] = {}  # base path -> (stamp, the loaded template or None)

    def poll(self, base_paths: Iterable[str]) -> None:
        """Start loading each base path's template that is new or changed since the last poll; let go of those
        gone.  Quick (a stat per base path): the loads run on their own threads."""
        wanted = {os.path.abspath(path) for path in base_paths}
        starts = []
        with self._lock:
            for base in sorted(set(self._held) - wanted):
                del self._held[base]
            for base in sorted(wanted):
                folder = os.path.join(base, TEMPLATE_DIR)
                stamp = _stamp(folder)
                held = self._held.get(base)
                if held is not None and held[0] == stamp:
                    continue
                if stamp is None:
                    if held is not None:
                        del self._held[base]
                        log.info("%s: template removed; let go", folder)
                    continue
                self._held[base] = (stamp, None)
                starts.append((base, folder, stamp))
        for base, folder, stamp in starts:
            threading.Thread(target=self._load, args=(base, folder, stamp), daemon=True,
                             name="odal-serving-template").start()

    def loaded(self, base_path: str) -> bool:
        """Whether ``base_path``'s current template is loaded and held."""
        with self._lock:
            held = self._held.get(os.path.abspath(base_path))
        return held is not None and held[1] is not None

    def _load(self, base: str, folder: str, stamp: tuple) -> None:
        started = time.monotonic()
        log.info("%s: loading the template (not served: versions with its graph will read only their variables)",
                 folder)
        try:
            template = self._loader.preload(folder)
        except Exception as error:  # noqa: BLE001 - without it, the first version of the graph loads whole
            log.warning("%s: template not loaded (%s: %s)", folder, type(error).__name__, error)
            return
        if template is None:
            return
        with self._lock:
            if self._held.get(base, (None,))[0] != stamp:  # replaced or removed meanwhile
                log.info("%s: template replaced while it loaded; the new one is loaded instead", folder)
                return
            self._held[base] = (stamp, template)
        log.info("%s: template loaded in %.1fs", folder, time.monotonic() - started)
