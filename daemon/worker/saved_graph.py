"""A whole SavedModel written once, and the means to write it again with other values of its variables.

``tf.saved_model.save`` names each variable in ``variables/`` by its path in the object graph it builds (Keras
layers add dependencies for SavedModel serialisation, so the names differ from ``tf.train.Checkpoint``'s), and the
restore op in ``saved_model.pb`` asks for exactly those names.  Listing that graph is the slow part (most of a
second of the demo model's export with TF's saver, even walking a cached listing), so it is listed once, at the
full save: each checkpoint key with the variable it holds, and the object graph the full save wrote.  A rewrite is
then one ``SaveV2`` of those keys with the variables' live values, under the same object graph: what the saver
writes (``tests/test_worker.py`` compares it with a whole save), without walking the graph.  Each rewrite is
checked before it writes: the same names and shapes as the full save, else it fails (and the caller saves in full).
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from odal.daemon.worker import tf_private

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class SavedGraph:
    def __init__(self, graph_pb: bytes, keys: dict, object_graph: bytes, variables: list, folders: list[str]):
        self.graph_pb, self.folders = graph_pb, folders
        self.keys, self.object_graph = keys, object_graph  # checkpoint key -> variable; the object graph written
        self.variables = variables  # [(name, shape)] of the full save's variables/, as tf.train.list_variables
        self._live = None  # (exported model, training model, live_sources of them)

    @classmethod
    def save(cls, module, signature, out_dir: Path) -> "SavedGraph | None":
        """``tf.saved_model.save`` into ``out_dir``; a SavedGraph for later rewrites, or None if it cannot be
        reused (asset files beside the graph, objects other than variables in its checkpoint, or a TensorFlow
        whose internals moved)."""
        views = tf_private.save_keeping_graph_view(
            lambda: tf.saved_model.save(module, str(out_dir), signatures=signature))
        files = {str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()}
        if len(views) != 1 or {f for f in files if not f.startswith("variables/")} != {"saved_model.pb",
                                                                                        "fingerprint.pb"}:
            return None
        prefix = str(out_dir / "variables" / "variables")
        keys, _ = tf_private.keys_to_save(tf_private.trackable_saver(views[0]))
        variables = tf.train.list_variables(prefix)
        if (not all(isinstance(value, tf.Variable) for value in keys.values())
                or sorted(keys) != sorted(name for name, _ in variables if name != OBJECT_GRAPH_KEY)):
            return None
        object_graph = tf.train.load_checkpoint(prefix).get_tensor(OBJECT_GRAPH_KEY)
        return cls((out_dir / "saved_model.pb").read_bytes(), keys, object_graph, variables,
                   [p.name for p in out_dir.iterdir() if p.is_dir()])

    def live_sources(self, exported, model) -> dict | None:
        """{checkpoint key: the variable of ``model`` (the training model) that holds the value the full save's
        variable under that key (of ``exported``, the saved module's model) restores from a checkpoint of
        ``model``}, matched by their keys in a checkpoint of each model; None when some variable has no
        counterpart of the same shape and dtype (then the caller restores the checkpoint into ``exported``)."""
        if self._live is None or self._live[0] is not exported or self._live[1] is not model:
            saved = tf_private.checkpoint_variables(exported)
            training = tf_private.checkpoint_variables(model)
            by_variable = {id(variable): training.get(key) for key, variable in saved.items()}
            sources = {key: by_variable.get(id(variable)) for key, variable in self.keys.items()}
            if not all(source is not None and source.shape == self.keys[key].shape
                       and source.dtype == self.keys[key].dtype for key, source in sources.items()):
                sources = None
            self._live = (exported, model, sources)
        return self._live[2]

    def write(self, out_dir: Path, sources: dict | None = None) -> None:
        """The full save's graph and the live values of its variables (or of ``sources``' variables, by key: see
        :meth:`live_sources`), as a complete SavedModel in ``out_dir``."""
        names = sorted(self.keys)
        values = [(sources or self.keys)[name].read_value() for name in names]
        written = sorted([(OBJECT_GRAPH_KEY, [])] + [(name, value.shape.as_list())
                                                     for name, value in zip(names, values)])
        if written != [(name, list(shape)) for name, shape in self.variables]:
            raise RuntimeError("the rewritten variables do not match the full save's")
        for folder in self.folders:  # variables/, and assets/ (empty) as the full save made it
            (out_dir / folder).mkdir(parents=True)
        tf.raw_ops.SaveV2(prefix=str(out_dir / "variables" / "variables"), tensor_names=[OBJECT_GRAPH_KEY] + names,
                          shape_and_slices=[""] * (len(names) + 1),
                          tensors=[tf.constant(self.object_graph, dtype=tf.string)] + values)
        (out_dir / "saved_model.pb").write_bytes(self.graph_pb)  # last, as TF does (publish_dir fsyncs it all)
        tf_private.write_fingerprint(out_dir)
