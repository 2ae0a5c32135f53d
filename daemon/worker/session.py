"""A model session: one OD API detection model kept alive across rounds in the worker process.

Building the model and tracing the train step cost most of a stock ``model_main_tf2`` run (about 20 s of a tiny
model's first step); the inference function costs as much again at export.  A session pays both once, and each
later round only reads new data, runs its steps, evaluates and saves.  A session is keyed by the model part of the
pipeline config: change the model and the worker builds a new session.

Export the same way: only the first export of a session writes a whole SavedModel (``tf.saved_model.save``,
15-26 s of a tiny model, nearly all of it serialising the graph).  The graph does not change between rounds, only
the weights do, so later exports write the first one's ``saved_model.pb`` again and only ``variables/``, under the
checkpoint keys the SavedModel's restore op names (what TF Serving reads), in well under a second.

The OD API's own conventions hold (each measured to break otherwise):

* The learning rate.  The global step carries across rounds, so a config's decaying schedule evaluated at the global
  step reached 0 after ``num_steps`` and every later round trained nothing.  Instead, each round runs the config's
  whole schedule (warm-up, decay) compressed into its own steps: at a round's step ``i`` of ``n`` the rate is the
  schedule's at ``i * num_steps / n`` (``num_steps`` from the config; 0 = unscaled).  Every round so starts with the
  config's warm-up (which protects fine-tuned weights from the restart) and ends annealed, as the config's author
  meant a finished training to end: a warm restart per round.  The global step still counts every step (TensorBoard).
* ``use_bfloat16`` is turned off off-TPU, as the stock train loop does.
* ``freeze_variables`` / ``update_trainable_variables`` choose the variables a step updates, as the TF1 loop did
  (the TF2 loop ignores them; see :mod:`odal.daemon.worker.freeze`).
* A fine-tune start is restored as ``model_lib_v2`` does it, and reports how many variables it restored and skipped.
* Checkpoints carry ``save_counter`` and a ``checkpoint`` state file, so the OD API's own exporter re-exports them.

Stages take explicit inputs and write only where they are told to.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import tensorflow as tf
from object_detection import inputs, model_lib_v2
from object_detection.builders import model_builder, optimizer_builder
from object_detection.utils import config_util

from google.protobuf import text_format

from odal.daemon.rounds.contracts import FineTune
from odal.daemon.system.atomic import atomic_write_text, remove_tree
from odal.daemon.worker import distribute, freeze, tf_private, throughput
from odal.daemon.worker.embedding import DetectionWithEmbeddingModule
from odal.daemon.worker.saved_graph import SavedGraph
from odal.daemon.worker.eval_cache import DecodedElements, ServedCache
from odal.daemon.worker.evaluation import TracedEval

Progress = Callable[[int, int, float], None]
MAX_EVAL_IMAGES = 4  # side-by-side eval images (detections | annotators' boxes) in TensorBoard per evaluation


def load_configs(pipeline_config: Path, label_map: Path, num_classes: int, train_record: Path,
                 eval_record: Path, fine_tune: FineTune | None = None) -> dict:
    """The user's pipeline.config with this round's inputs, label map, class count and fine-tune start (the
    daemon's resolved one, which it read from this file or odal.toml) filled in, adjusted as the stock train
    loop adjusts it on this machine (see :func:`adjustments`)."""
    configs = config_util.get_configs_from_pipeline_file(str(pipeline_config))
    configs = config_util.merge_external_params_with_configs(
        configs,
        kwargs_dict={
            "train_input_path": str(train_record),
            "eval_input_path": str(eval_record),
            "label_map_path": str(label_map),
        },
    )
    model_config = configs["model"]
    getattr(model_config, model_config.WhichOneof("model")).num_classes = num_classes
    # Eval images (detections | annotators' boxes) each evaluation writes for TensorBoard: at most a few a round.
    eval_config = configs["eval_config"]
    eval_config.num_visualizations = min(eval_config.num_visualizations, MAX_EVAL_IMAGES)
    if fine_tune:
        configs["train_config"].fine_tune_checkpoint = fine_tune.path
        configs["train_config"].fine_tune_checkpoint_type = fine_tune.type
    return configs


def adjustments(configs: dict) -> list[str]:
    """Make ``configs`` what the stock TF2 train loop runs on a CPU or GPU; a note for each change made."""
    notes = []
    if configs["train_config"].use_bfloat16:  # model_lib_v2.train_loop: use_bfloat16 and use_tpu
        configs["train_config"].use_bfloat16 = False
        notes.append("train_config.use_bfloat16: off (not a TPU; as the stock train loop)")
    return notes


def session_key(configs: dict) -> str:
    """What must match for a cached session to be reused: the model, the optimiser and what it updates."""
    train_config = configs["train_config"]
    text = (str(configs["model"]) + str(train_config.optimizer) + str(train_config.batch_size) +
            repr(freeze.patterns(train_config)))
    return hashlib.sha256(text.encode()).hexdigest()


class ModelSession:
    def __init__(self, configs: dict, dist: distribute.Distribution = distribute.DEFAULT):
        self.key = session_key(configs)
        throughput.configure_threads()  # before the runtime starts; see throughput for each setting's measure
        self.dist = dist  # the tf.distribute strategy the model, its optimiser and its train step live in
        self.model_config = configs["model"]
        train_config = configs["train_config"]
        self.train_config = train_config
        self.patterns = freeze.patterns(train_config)
        with dist.scope():  # as model_lib_v2.train_loop builds them
            self.model = model_builder.build(model_config=self.model_config, is_training=True)
            self.global_step = tf.Variable(0, trainable=False, dtype=tf.int64, name="global_step",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            # The step the learning-rate schedule is evaluated at: set before each train step (the module's doc).
            self.schedule_step = tf.Variable(0, trainable=False, dtype=tf.int64, name="schedule_step",
                                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.optimizer, rates = optimizer_builder.build(train_config.optimizer, global_step=self.schedule_step)
        self._rate = rates[0] if rates else None
        self.checkpoint = tf.train.Checkpoint(step=self.global_step, model=self.model, optimizer=self.optimizer)
        self.weights_from: str | None = None  # the checkpoint the live weights equal, None if none (or unknown)
        self.trained = False  # whether the live weights have moved from their starting point
        self._train_step = None
        self._datasets: dict[str, tuple[str, object]] = {}  # split -> (what it was built from, the dataset)
        self._links = tempfile.TemporaryDirectory(prefix="odal-worker-")  # the stable paths the datasets read
        self.traced_eval = TracedEval(self.model)  # the eval step, traced once per session
        self.served_cache = ServedCache()  # the likely next served version's eval outputs (eval_cache)
        self.decoded_eval = DecodedElements()  # the eval split's elements, decoded once per record file
        self._inference = None
        self._plain = None  # under a strategy: (one-device model that evaluations run, checkpoint it holds)
        self._graph: SavedGraph | None = None  # set by the first export: what later exports write again

    # -- weights ---------------------------------------------------------------------------------------------------
    def restore(self, checkpoint_prefix: str | None, fine_tune: FineTune | None, dataset) -> None:
        """Make the live weights those of ``checkpoint_prefix`` (the previous round), or a fine-tune start."""
        if checkpoint_prefix:
            if self.weights_from != checkpoint_prefix:
                # Variables not created yet are restored when the first train step creates them (TF's deferred
                # restoration, as the stock train loop relies on); existing ones are assigned now.
                self.checkpoint.restore(checkpoint_prefix)
                self.weights_from = checkpoint_prefix
            return
        if self.trained:
            raise RuntimeError("a session that has trained cannot start from scratch again; use a new session")
        if fine_tune:
            return restore_fine_tune(self.model, fine_tune.path, fine_tune.type, self.train_config, dataset)
        return None

    def save(self, checkpoint_dir: Path) -> str:
        """Write the live weights, step and optimiser state into ``checkpoint_dir`` (the caller publishes it), as
        ``tf.train.CheckpointManager`` would: with ``save_counter`` and a ``checkpoint`` state file naming it
        (relative), which is what the OD API's exporter (``exporter_main_v2``) restores and checks."""
        self.checkpoint.save_counter.assign_add(1)  # creates it on first use: then it is part of what is written
        prefix = self.checkpoint.write(str(checkpoint_dir / "ckpt"))  # durable when the caller publishes it
        atomic_write_text(checkpoint_dir / "checkpoint", tf_private.checkpoint_state("ckpt"))
        return prefix

    def learning_rate(self) -> float:
        """The rate the next train step uses."""
        rate = self._rate() if callable(self._rate) else self._rate
        return float(rate) if rate is not None else float("nan")

    # -- train -------------------------------------------------------------------------------------------------------
    def _make_train_step(self):
        model, optimizer, step = self.model, self.optimizer, self.global_step
        if any(self.patterns):  # the variables a step updates, chosen when it is traced (see freeze)
            model = freeze.TrainableView(model, *self.patterns)
        train_config = self.train_config
        clip = train_config.gradient_clipping_by_norm if train_config.gradient_clipping_by_norm > 0 else None
        strategy, replicas = self.dist.strategy, self.dist.replicas

        def replica_step(features, labels):
            losses = model_lib_v2.eager_train_step(
                model, features, labels, train_config.unpad_groundtruth_tensors, optimizer,
                training_step=step, add_regularization_loss=train_config.add_regularization_loss,
                clip_gradients_value=clip, num_replicas=replicas,
            )
            step.assign_add(1)
            return losses  # Loss/total_loss and each component (localization, classification, regularization...)

        if throughput.xla():
            replica_step = tf.function(replica_step, jit_compile=True)

        def train_step(iterator):
            features, labels = next(iterator)
            if strategy is None:
                return replica_step(features, labels)
            # As model_lib_v2.train_loop: each replica's losses are divided by the replica count (eager_train_step),
            # so the gradients all-reduced by the optimiser are those of the global batch's mean loss, and the
            # replicas' losses are summed into that mean.
            per_replica = strategy.run(replica_step, args=(features, labels))
            return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in per_replica.items()}

        return throughput.several_steps(train_step, self.schedule_step)

    def _dataset(self, configs: dict, split: str):
        """The ``split`` ("train" or "eval") dataset, built once per session and read again each round through a
        stable path that points at the round's record file.  (Building the OD API's input pipelines anew each round
        grew the worker by ~50 MiB a round, which weeks of rounds would not survive; a new iterator over the same
        dataset does not.)"""
        input_config = type(configs[f"{split}_input_config"])()
        input_config.CopyFrom(configs[f"{split}_input_config"])
        link = Path(self._links.name) / f"{split}.record"
        new_link = link.with_name(f"{split}.record.new")
        new_link.unlink(missing_ok=True)
        os.symlink(os.path.abspath(input_config.tf_record_input_reader.input_path[0]), new_link)
        os.replace(new_link, link)
        del input_config.tf_record_input_reader.input_path[:]
        input_config.tf_record_input_reader.input_path.append(str(link))
        cache = split == "train" and throughput.cache_enabled() and throughput.cache_fits(str(link))
        built_from = str(input_config) + str(configs[f"{split}_config"]) + f"cache={cache}"
        cached = self._datasets.get(split)
        if cached is None or cached[0] != built_from:
            if split == "train" and self.dist.strategy is not None:
                def dataset_fn(context):  # as model_lib_v2.train_loop, with the per-replica batch
                    return throughput.train_input(cache, train_config=configs["train_config"],
                                                  train_input_config=input_config, model_config=self.model_config,
                                                  model=self.model,
                                                  input_context=distribute.input_context(context)).repeat()

                dataset = self.dist.strategy.distribute_datasets_from_function(dataset_fn)
            elif split == "train":
                dataset = throughput.train_input(cache, train_config=configs["train_config"],
                                                 train_input_config=input_config, model_config=self.model_config,
                                                 model=self.model).repeat()
            else:
                dataset = inputs.eval_input(eval_config=configs["eval_config"], eval_input_config=input_config,
                                            model_config=self.model_config, model=self.model)
            cached = self._datasets[split] = (built_from, dataset)
        return cached[1]

    def trace_train(self, configs: dict) -> None:
        """Trace the train step (creating the model's and optimiser's variables) without running it."""
        with self.dist.scope():  # the optimiser's slots are made here: in the strategy, as in train()
            if self._train_step is None:
                self._train_step = self._make_train_step()
            iterator = iter(self._dataset(configs, "train"))
            self._train_step.get_concrete_function(iterator, *throughput.call_args(1, 1, 1.0))

    def train(self, configs: dict, steps: int, init_checkpoint: str | None, fine_tune: FineTune | None,
              progress: Progress, summary_dir: Path | None = None) -> dict:
        """Continue from ``init_checkpoint`` (or ``fine_tune``, or scratch) for ``steps`` steps on all train data."""
        with self.dist.scope():
            return self._train(configs, steps, init_checkpoint, fine_tune, progress, summary_dir)

    def _train(self, configs: dict, steps: int, init_checkpoint: str | None, fine_tune: dict | None,
               progress: Progress, summary_dir: Path | None) -> dict:
        dataset = self._dataset(configs, "train")
        restored = self.restore(init_checkpoint, fine_tune, dataset)
        if self._train_step is None:
            self._train_step = self._make_train_step()
        iterator = iter(dataset)
        writer = tf.summary.create_file_writer(str(summary_dir)) if summary_dir else tf.summary.create_noop_writer()
        num_steps = configs["train_config"].num_steps
        scale = num_steps / steps if num_steps > 0 and steps > 0 else 1.0  # the config's schedule within the round
        started, cpu_started = time.monotonic(), time.process_time()
        self.weights_from, self.trained = None, True  # from the first step on, no checkpoint equals the weights
        with writer.as_default():
            loss, losses, rates, first_step_seconds = throughput.run_steps(self, iterator, steps, scale, progress)
        writer.flush()
        result = {"steps": steps, "global_step": int(self.global_step.numpy()), "loss": loss, "losses": losses,
                  "replicas": self.dist.replicas,
                  "first_step_seconds": first_step_seconds, "seconds": time.monotonic() - started,
                  "cpu_seconds": time.process_time() - cpu_started,  # all threads: on a shared machine, the cost
                  "learning_rate": {"first": rates[0], "last": rates[-1], "max": max(rates)} if rates else None}
        if restored is not None:
            result["fine_tune"] = restored
        frozen = freeze.summary(self.model.trainable_variables, *self.patterns)
        if frozen is not None:
            result["frozen"] = frozen
        return result

    # -- evaluate ----------------------------------------------------------------------------------------------------
    def evaluate(self, configs: dict, summary_dir: Path | None = None, later: list | None = None,
                 **cache) -> dict:
        """COCO detection metrics on the eval split, with the live weights (under a strategy: those of the
        checkpoint just saved, ``weights_from``, in :meth:`evaluation_model`).  ``cache``: the traced step's
        ``record``, ``reuse`` and ``before_step`` (:class:`TracedEval`); the OD API's loop takes none.
        ``later``: receives a call that writes the TensorBoard images, for after the round's answer."""
        dataset = self._dataset(configs, "eval")
        model = self.evaluation_model()
        writer = tf.summary.create_file_writer(str(summary_dir)) if summary_dir else tf.summary.create_noop_writer()
        images = [] if later is not None and summary_dir else None
        with writer.as_default():
            if self.uses_eager_eval():
                # the OD API's loop, traced each call: under a strategy, on the one-device copy (benchmarks too)
                metrics = model_lib_v2.eager_eval_loop(model, configs, dataset, global_step=self.global_step)
            else:
                record = Path(configs["eval_input_config"].tf_record_input_reader.input_path[0])
                elements = self.decoded_eval.of(record, dataset, self._datasets["eval"][0])
                metrics = self.traced_eval(configs, dataset, self.global_step, elements=elements, images=images,
                                           **cache)
        writer.flush()
        if images:
            later.append(lambda: _write_images(writer, images))
        tf_private.set_training(model)
        return {name: float(value) for name, value in metrics.items()}

    def uses_eager_eval(self) -> bool:
        """Whether evaluations run the OD API's own loop (under a strategy, or asked for by benchmarks)."""
        return self.dist.strategy is not None or os.environ.get("ODAL_EVAL_LOOP") == "eager"

    def evaluation_model(self):
        """The model evaluations run: the training model itself, or under a strategy a one-device copy holding
        the checkpoint ``weights_from``.  (A distributed model's batch-norm statistics are synchronised on read:
        reading them outside the replicas is an all-reduce across the workers, which the other workers, done with
        the round, never join: the chief's evaluation waited until the collective timeout.)"""
        if self.dist.strategy is None:
            return self.model
        if self._plain is None:
            self._plain = [model_builder.build(model_config=self.model_config, is_training=True), None]
        if self._plain[1] != self.weights_from and self.weights_from:
            tf.train.Checkpoint(model=self._plain[0]).restore(self.weights_from).expect_partial()
            self._plain[1] = self.weights_from
        return self._plain[0]

    # -- export ------------------------------------------------------------------------------------------------------
    def export(self, checkpoint_prefix: str, out_dir: Path) -> str:
        """A SavedModel (``serving_default``: uint8 ``input_tensor`` [None, H, W, 3] -> detections and
        ``image_embedding``, see :mod:`odal.daemon.worker.embedding`) in ``out_dir``
        (not there yet; the caller publishes it).  Returns how it was written: ``"weights"`` (the graph of the
        session's first export, new variables), ``"full"``, or ``"full (rewrite failed: ...)"``."""
        if self._inference is None:
            model = model_builder.build(model_config=self.model_config, is_training=False)
            module = DetectionWithEmbeddingModule(model)
            concrete = module.__call__.get_concrete_function()
            self._inference = (model, module, concrete)
        model, module, concrete = self._inference
        # The live weights are the checkpoint's: the rewrite reads them, not the checkpoint from disk again.
        live = self._graph.live_sources(model, self.model) if self._graph is not None and \
            self.weights_from == checkpoint_prefix and self.dist.strategy is None else None
        if live is None:
            tf.train.Checkpoint(model=model).restore(checkpoint_prefix).expect_partial().assert_nontrivial_match()
        how = "full"
        if self._graph is not None:
            try:
                self._graph.write(out_dir, live)
                return "weights"
            except Exception as error:  # never serve a doubtful model: write the whole SavedModel instead
                how = f"full (rewrite failed: {type(error).__name__}: {error})"
                remove_tree(out_dir)
                if live is not None:
                    tf.train.Checkpoint(model=model).restore(checkpoint_prefix).expect_partial()
        self._graph = SavedGraph.save(module, concrete, out_dir)
        if self._graph is not None and self.dist.strategy is None:
            self._graph.live_sources(model, self.model)  # listed now, beside the whole save, not in a later round
        return how


def restore_fine_tune(model, path: str, kind: str, train_config, dataset) -> dict:
    """``model_lib_v2.load_fine_tune_checkpoint`` (build the model on a batch, restore the objects that ``kind``
    names, same checks), counting what was restored: the checkpoint's variables matched and not matched (e.g. an
    optimiser's, or a class head of other classes), and the model's variables left at their fresh values."""
    if not model_lib_v2.is_object_based_checkpoint(path):
        raise IOError(f"train_config.fine_tune_checkpoint: {path} is not an object-based (TF2) checkpoint")
    train_step = getattr(model, "_training_step", None)  # (before the dummy computation, which may reset it)
    if train_config.run_fine_tune_checkpoint_dummy_computation:
        tf_private.ensure_model_is_built(model, dataset, train_config.unpad_groundtruth_tensors)
    restore_map = model.restore_from_objects(fine_tune_checkpoint_type=kind)
    model_lib_v2.validate_tf_v2_checkpoint_restore_map(restore_map)
    status = tf.train.Checkpoint(**restore_map).restore(path).expect_partial()
    missing = tf_private.unmatched_variables(status, restore_map, train_step)
    if missing:  # the train step's own variable (traced before: prewarm) is never in a fine-tune checkpoint
        raise AssertionError(f"{len(missing)} variables are not in the fine-tune checkpoint {path} "
                             f"(type {kind}): {missing[:5]}")
    coordinator = tf_private.restore_coordinator(status)
    with_values = [node_id for node_id, node in enumerate(coordinator.object_graph_proto.nodes) if node.attributes]
    matched = [coordinator.object_by_proto_id.get(node_id) for node_id in with_values]
    restored_ids = {id(obj) for obj in matched if obj is not None}
    return {"checkpoint": path, "type": kind, "restored": len(restored_ids),
            "skipped": sum(obj is None for obj in matched),
            "fresh": sum(id(variable) not in restored_ids for variable in model.variables)}


def _write_images(writer, images: list) -> None:
    with writer.as_default():
        for draw in images:
            draw()
    writer.flush()


def write_pipeline(configs: dict, path: Path) -> None:
    """The effective pipeline config of a round, for the record (and for TF Serving users who re-export)."""
    atomic_write_text(path, text_format.MessageToString(config_util.create_pipeline_proto_from_configs(configs)))

