"""The models the server knows: their versions' states, the loaded servables, labels, and the manager thread.

TF Serving's behaviour, reproduced:

* every poll, each model's base path gives its aspired versions (``discovery``);
* availability-preserving transitions: a non-aspired version is unloaded only once an aspired one is AVAILABLE
  (or nothing is aspired any more), so a new version is loaded before the old one goes, and a version that fails
  to load leaves the old one serving;
* a failed load is retried ``max_load_retries`` times, ``retry_interval`` apart (the version shows LOADING), then
  the version is END with the error and is not tried again while it stays aspired;
* states are kept after unloading (END, OK), as TF Serving's servable state monitor keeps them.

Loading runs on the manager thread, never on a request thread.  All shared state is behind one condition
variable; ``load_fn`` (which is where TensorFlow comes in) is called outside it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from odal.serving import discovery
from odal.serving.errors import ServingError, failed_precondition, invalid_argument, not_found

log = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass(frozen=True)
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _Version:
    number: int
    path: str
    state: str = START
    error: ServingError | None = None
    servable: Any = None
    in_manager: bool = True  # False once unloaded, or once a failed version stops being aspired
    retries_left: int = 0
    next_attempt: float = 0.0


@dataclass
class _Model:
    name: str
    source: discovery.ModelSource | None
    aspired: dict[int, str] = field(default_factory=dict)
    versions: dict[int, _Version] = field(default_factory=dict)


class Registry:
    """Loaded models and their state; ``start()`` runs the manager thread, ``stop()`` ends it and unloads."""

    def __init__(self, load_fn: Callable[[str], Any], poll_seconds: float = 1.0, max_load_retries: int = 5,
                 retry_interval: float = 60.0, allow_labels_for_unavailable: bool = False, watch: bool = False,
                 on_poll: Callable[[list[str]], None] | None = None):
        self._load_fn = load_fn
        self._on_poll = on_poll  # told the configured base paths at each poll (serving/template.py); must be quick
        self._watch = watch  # also wake on inotify events in the base paths (serving/watch.py)
        self._watcher = None
        self._poll_seconds = poll_seconds
        self._max_load_retries = max_load_retries
        self._retry_interval = retry_interval
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._cond = threading.Condition()
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._configured = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._watch:
            from odal.serving.watch import BasePathWatcher

            self._watcher = BasePathWatcher(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="odal-serving-manager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            for model in self._models.values():
                for version in model.versions.values():
                    version.servable = None

    def __enter__(self) -> "Registry":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- configuration -----------------------------------------------------------------------------------

    def reload(self, config: discovery.ModelServerConfig, wait_seconds: float | None = None) -> None:
        """Switch to a new model list (TF Serving's ReloadConfig); waits up to ``wait_seconds`` for new models."""
        new_sources = discovery.sources(config)
        with self._cond:
            self._check_labels(new_sources)
            old_names = {name for name, model in self._models.items() if model.source is not None}
            new_names = {source.name for source in new_sources} - old_names
            kept = {source.name for source in new_sources}
            for model in self._models.values():
                if model.name not in kept:  # removed from the config: every version goes
                    model.source, model.aspired = None, {}
            for source in new_sources:
                self._models.setdefault(source.name, _Model(source.name, source)).source = source
            self._labels = {source.name: dict(source.labels) for source in new_sources if source.labels}
            self._configured = True
        log.info("model config: %s", ", ".join(f"{s.name} <- {s.base_path}" for s in new_sources) or "(none)")
        self._wake.set()
        if wait_seconds and new_names:
            self._wait_available(new_names, wait_seconds)

    def _check_labels(self, new_sources: list[discovery.ModelSource]) -> None:
        for source in new_sources:
            for label, number in source.labels.items():
                allowed = False
                if self._allow_labels_for_unavailable:
                    existing = self._labels.get(source.name, {}).get(label)
                    allowed = existing is None or existing == number
                model = self._models.get(source.name)
                version = model.versions.get(number) if model else None
                if not allowed and (version is None or version.state != AVAILABLE):
                    raise failed_precondition(
                        f"Request to assign label to version {number} of model {source.name}, which is not "
                        f"currently available for inference")

    def _wait_available(self, names: set[str], wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            while True:
                failed = {}
                pending = set()
                for name in names:
                    model = self._models[name]
                    if any(v.state == AVAILABLE for v in model.versions.values()):
                        continue
                    latest = max(model.versions) if model.versions else None
                    if latest is not None and model.versions[latest].state == END:
                        failed[name] = model.versions[latest]
                    else:
                        pending.add(name)
                if failed and not pending:
                    parts = "".join(f"{{name: {n} version: {v.number} due to error: {v.error.code}: "
                                    f"{v.error.message}}}, " for n, v in sorted(failed.items()) if v.error)
                    raise ServingError("UNKNOWN", f"{len(failed)} model(s) did not become available: {{{parts}}}")
                if not pending:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    raise ServingError("DEADLINE_EXCEEDED",
                                       f"models still loading: {', '.join(sorted(pending))}")
                self._cond.wait(min(remaining, 1.0))

    # ---- request side ------------------------------------------------------------------------------------

    def resolve_label(self, name: str, label: str) -> int:
        with self._cond:
            number = self._labels.get(name, {}).get(label)
        if number is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return number

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> tuple[int, Any]:
        """(version, servable) answering a request: the given version, the label's, or the latest AVAILABLE."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        if label is not None:
            version = self.resolve_label(name, label)
        with self._cond:
            model = self._models.get(name)
            if version is None:
                ready = [v for v in model.versions.values() if v.state == AVAILABLE] if model else []
                if not ready:
                    raise not_found(f"Servable not found for request: Latest({name})")
                chosen = max(ready, key=lambda v: v.number)
            else:
                chosen = model.versions.get(version) if model else None
                if chosen is None or chosen.state != AVAILABLE:
                    raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return chosen.number, chosen.servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """GetModelStatus: one version, or every version known (newest first)."""
        if label is not None:
            version = self.resolve_label(name, label)
        with self._cond:
            model = self._models.get(name)
            if version is not None:
                found = model.versions.get(version) if model else None
                if found is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                chosen = [found]
            else:
                if model is None or not model.versions:
                    raise not_found(f"Could not find any versions of model {name}")
                chosen = sorted(model.versions.values(), key=lambda v: v.number, reverse=True)
            return [VersionStatus(v.number, v.state, v.error.code, v.error.message)
                    if v.error is not None and v.state == END else VersionStatus(v.number, v.state)
                    for v in chosen]

    def model_names(self) -> list[str]:
        with self._cond:
            return sorted(name for name, model in self._models.items() if model.source is not None)

    # ---- manager thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the manager must outlive any one bad poll
                log.exception("model poll failed")
            if self._poll_seconds > 0:
                self._wake.wait(self._poll_seconds)
            else:
                self._wake.wait()
            self._wake.clear()

    def poll_once(self) -> None:
        """Read every base path once and carry out the transitions it calls for."""
        with self._cond:
            models = list(self._models.values())
        if self._watcher is not None:  # base paths of the config (one that appeared since is watched from now)
            self._watcher.update(model.source.base_path for model in models if model.source is not None)
        if self._on_poll is not None:
            self._on_poll([model.source.base_path for model in models if model.source is not None])
        for model in models:
            source = model.source
            if source is not None:
                live = any(v.state == AVAILABLE for v in model.versions.values())
                if not (source.policy.kind == "latest_once" and live):
                    aspired = source.aspired()
                    if aspired is None:
                        log.error("Could not find base path %s for servable %s", source.base_path, source.name)
                    else:
                        if not aspired:
                            log.warning("No versions of servable %s found under base path %s", source.name,
                                        source.base_path)
                        with self._cond:
                            if model.source is source:
                                model.aspired = aspired
            self._reconcile(model)

    def _reconcile(self, model: _Model) -> None:
        while not self._stop.is_set():
            with self._cond:
                action = self._next_action(model)
            if action is None:
                return
            kind, number = action
            if kind == "unload":
                self._unload(model, number)
            else:
                self._load(model, number)

    def _next_action(self, model: _Model) -> tuple[str, int] | None:
        aspired = model.aspired
        for version in model.versions.values():
            if version.number in aspired:
                continue
            if version.state == END and version.in_manager:
                version.in_manager = False
            elif version.state in (START, LOADING):  # a load awaiting retry that is no longer wanted
                version.state, version.in_manager = END, False
                self._cond.notify_all()
        ready = [v.number for v in model.versions.values() if v.state == AVAILABLE]
        aspired_ready = any(number in aspired for number in ready)
        unaspired_ready = sorted(number for number in ready if number not in aspired)
        if unaspired_ready and (not aspired or aspired_ready or len(unaspired_ready) > 1):
            return "unload", unaspired_ready[0]
        new = [n for n in aspired if n not in model.versions or not model.versions[n].in_manager]
        if new:
            return "load", max(new)
        now = time.monotonic()
        due = [v.number for v in model.versions.values()
               if v.state == LOADING and v.number in aspired and v.next_attempt <= now]
        return ("load", max(due)) if due else None

    def _load(self, model: _Model, number: int) -> None:
        with self._cond:
            path = model.aspired[number]
            version = model.versions.get(number)
            if version is None or not version.in_manager:
                version = _Version(number, path, retries_left=self._max_load_retries)
                model.versions[number] = version
                self._cond.notify_all()
            version.state = LOADING
            self._cond.notify_all()
        log.info("Loading servable: {name: %s version: %d} from %s", model.name, number, path)
        started = time.monotonic()
        servable, error = self._try_load(path)
        with self._cond:
            version.error = error
            if error is None:
                version.servable, version.state = servable, AVAILABLE
                log.info("Successfully loaded servable version {name: %s version: %d} in %.1fs",
                         model.name, number, time.monotonic() - started)
            elif version.retries_left > 0:
                version.retries_left -= 1
                version.next_attempt = time.monotonic() + self._retry_interval
                log.error("Loading servable: {name: %s version: %d} failed: %s; retrying in %.0fs",
                          model.name, number, error, self._retry_interval)
            else:
                version.state = END
                log.error("Loading servable: {name: %s version: %d} failed: %s", model.name, number, error)
            self._cond.notify_all()

    def _try_load(self, path: str) -> tuple[Any, ServingError | None]:
        """(servable, None) or (None, the error as code and message only).  A failed load's exception chain holds
        the frames of the half-built model (hundreds of MB for a detector); keeping it in the version's status
        kept all of that alive, so only a fresh error is kept and the cycles are collected now."""
        failure = None
        try:
            return self._load_fn(path), None
        except ServingError as exc:
            failure = (exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - any failure is this version's status
            failure = ("UNKNOWN", f"{type(exc).__name__}: {exc}")
        gc.collect()
        return None, ServingError(*failure)

    def _unload(self, model: _Model, number: int) -> None:
        with self._cond:
            version = model.versions[number]
            version.state = UNLOADING
            version.servable = None  # requests in flight keep their own reference and finish
            self._cond.notify_all()
        log.info("Unloading servable version {name: %s version: %d}", model.name, number)
        with self._cond:
            version.state, version.error, version.in_manager = END, None, False
            self._cond.notify_all()
