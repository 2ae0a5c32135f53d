"""Load a new version whose graph is already loaded: only its variables are read (this module imports TensorFlow).

From its second round on, odal's worker exports weights only: ``saved_model.pb`` (and ``assets/``) are byte for byte
the first export's, only ``variables/`` change.  ``tf.saved_model.load`` of such a version still rebuilds every
function of the graph (several seconds for a detector, most of a round's confirmation).  Here, when a version's
graph bytes equal a loaded version's, the new version gets the loaded version's signature functions, each called
with a fresh set of variables holding the new version's checkpoint instead of the captured ones:

* nothing mutable is shared: every variable a signature reads is a new ``tf.Variable``, so the old version, still
  serving during the swap, keeps answering with its own weights;
* the values come from the new version's own checkpoint, matched to the variables by walking its object graph
  from the loaded model's root, as ``tf.saved_model.load`` restores them (same names, shapes and dtypes, or no
  reuse);
* a function capturing anything else mutable (a lookup table, a distributed variable), a graph that differs, or any
  failure on the way means a full load, which also reports a broken version's error exactly as before.

A captured function is re-bound through ``ConcreteFunction._captured_inputs`` (TensorFlow is pinned in
requirements.lock); ``tests/test_serving_reuse.py`` checks the result answers exactly as a full load of the same
version does.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import weakref

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from odal.serving.loader import Servable

log = logging.getLogger(__name__)

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def graph_bytes(export_dir: str) -> bytes:
    """What must be identical for reuse: ``saved_model.pb`` and every file under ``assets/`` (name and bytes),
    as one digest prefix plus the graph itself (compared whole, not by digest alone)."""
    digest = hashlib.sha256()
    assets = os.path.join(export_dir, "assets")
    for folder, dirs, files in sorted(os.walk(assets)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, assets).encode() + b"\0")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        return digest.digest() + handle.read()


class _Template:
    """A fully loaded version's model and, per signature, the variables its captured inputs are handles of."""

    def __init__(self, servable: Servable):
        self.servable = servable
        self.captured: dict[str, list[tf.Variable]] = {}
        for name, function in servable.functions.items():
            by_handle = {id(v.handle): v for v in function.variables}
            found = []
            for capture in function.captured_inputs:
                variable = by_handle.get(id(capture))
                if variable is None and capture.dtype in (tf.resource, tf.variant):
                    raise ValueError(f"signature {name} captures a resource that is not a variable")
                found.append(variable)  # None: an immutable tensor, shared as it is
            if not hasattr(function, "_captured_inputs"):
                raise ValueError("this TensorFlow's ConcreteFunction has no _captured_inputs")
            self.captured[name] = found

    def checkpoint_keys(self, prefix: str) -> dict[int, str]:
        """id(variable of the loaded model) -> its key in the checkpoint at ``prefix``, by walking the checkpoint's
        object graph from the model's root (what a full load's restore does)."""
        reader = tf.train.load_checkpoint(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
        keys: dict[int, str] = {}
        seen: set[int] = set()
        stack = [(0, self.servable.model)]
        while stack:
            node_id, obj = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            node = graph.nodes[node_id]
            for attribute in node.attributes:
                if attribute.name == "VARIABLE_VALUE":
                    keys.setdefault(id(obj), attribute.checkpoint_key)
            children = tf.train.TrackableView(obj).children(obj)
            stack.extend((child.node_id, children[child.local_name]) for child in node.children
                         if child.local_name in children)
        return keys

    def servable_for(self, export_dir: str) -> Servable:
        """Version ``export_dir`` (same graph) with its own variables, read from its checkpoint."""
        prefix = os.path.join(export_dir, "variables", "variables")
        keys = self.checkpoint_keys(prefix)
        reader = tf.train.load_checkpoint(prefix)
        fresh: dict[int, tf.Variable] = {}
        functions = {}
        for name, function in self.servable.functions.items():
            captures = []
            for capture, old in zip(function.captured_inputs, self.captured[name]):
                if old is None:
                    captures.append(capture)
                    continue
                if id(old) not in fresh:
                    value = reader.get_tensor(keys[id(old)])
                    if tuple(value.shape) != tuple(old.shape) or value.dtype != old.dtype.as_numpy_dtype:
                        raise ValueError(f"{keys[id(old)]}: {value.dtype}{list(value.shape)} in the checkpoint, "
                                         f"{old.dtype.name}{old.shape.as_list()} in the graph")
                    fresh[id(old)] = tf.Variable(value, dtype=old.dtype, trainable=False)
                captures.append(fresh[id(old)].handle)
            rebound = copy.copy(function)
            rebound._captured_inputs = captures  # noqa: SLF001 - see the module docstring
            functions[name] = rebound
        return Servable.assembled(export_dir, self.servable.meta_graph, self.servable.model, functions,
                                  keep=(self, list(fresh.values())))


class Loader:
    """Loads versions, reusing the functions of a loaded version with the same graph (``reuse=False``: always a
    full ``tf.saved_model.load``).  Graphs are remembered only while a version built on them is alive, or a
    template (``preload``, serving/template.py) is held."""

    def __init__(self, reuse: bool = True):
        self.reuse = reuse
        self._templates: weakref.WeakValueDictionary[bytes, _Template] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._pending: dict[bytes, threading.Event] = {}  # graphs being preloaded: a version of one waits for it

    def preload(self, export_dir: str) -> _Template | None:
        """Load ``export_dir`` whole as the graph later versions reuse, without serving it; the template (kept only
        while the caller, or a version built on it, holds it), or None when its graph cannot be reused.  A version
        of the same graph arriving meanwhile waits for this load instead of loading the graph a second time."""
        key = graph_bytes(export_dir)
        with self._lock:
            template = self._templates.get(key)
            done = self._pending.get(key)
            if template is None and done is None:
                self._pending[key] = threading.Event()
        if template is not None:
            return template
        if done is not None:  # another preload of this graph is under way
            done.wait()
            return self._templates.get(key)
        try:
            return self._remember(key, Servable(export_dir))
        finally:
            with self._lock:
                self._pending.pop(key).set()

    def _remember(self, key: bytes, servable: Servable) -> _Template | None:
        try:
            template = _Template(servable)
        except Exception as error:  # noqa: BLE001 - this graph is just not reused
            log.info("%s: its graph cannot be reused by later versions (%s)", servable.export_dir, error)
            return None
        servable.keep = template  # the template lives as long as a version built on it
        with self._lock:
            self._templates[key] = template
        return template

    def __call__(self, export_dir: str) -> Servable:
        if not self.reuse:
            return Servable(export_dir)
        try:
            key = graph_bytes(export_dir)
        except OSError:
            return Servable(export_dir)  # the full load reports what is missing, in TF Serving's words
        with self._lock:
            loading = self._pending.get(key)
        if loading is not None:
            log.info("%s: waiting for its graph, being loaded from a template", export_dir)
            loading.wait()
        template = self._templates.get(key)
        if template is not None:
            try:
                servable = template.servable_for(export_dir)
            except Exception as error:  # noqa: BLE001 - the full load decides, and reports its own error
                log.warning("%s: its variables could not be restored into the loaded graph (%s); loading it whole",
                            export_dir, error)
            else:
                log.info("%s: same graph as a loaded version; restored its variables only", export_dir)
                return servable
        servable = Servable(export_dir)
        self._remember(key, servable)
        return servable
