"""COCO evaluation with the eval step traced once per session, feeding the OD API's own evaluators.

``model_lib_v2.eager_eval_loop`` defines its ``tf.function`` inside the call, so every evaluation traces the model
again (most of a round's 3-4 s of evaluation on the demo model, twice a round with the publish gate).  Here the
same computation (losses, predictions, postprocess, the OD API's ``prepare_eval_dict``, its evaluators from
``eval_util``, the same TensorBoard side-by-side images) runs through one function traced with the eval dataset's
element spec as its signature: one trace per session, whatever the image sizes.  ``tests/test_evaluation.py``
checks it gives the numbers ``eager_eval_loop`` gives on the same model and records.

The trace depends on the model (the session), on ``train_config.add_regularization_loss`` and on the eval batch
size; a change of either traces again.  The model is put in inference mode for the evaluation and back in
training mode afterwards, as the session expects.
"""

from __future__ import annotations

import functools

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import tensorflow as tf
from object_detection import eval_util, inputs, model_lib, model_lib_v2
from object_detection.core import standard_fields as fields
from object_detection.utils import label_map_util
from object_detection.utils import visualization_utils as vutils

from odal.daemon.worker import eval_cache, tf_private

_FEATURES = (fields.InputDataFields.image, fields.InputDataFields.original_image,
             fields.InputDataFields.original_image_spatial_shape, fields.InputDataFields.true_image_shape,
             inputs.HASH_KEY)


class TracedEval:
    """The eval step of one model, traced on first use for one (dataset spec, loss setting, batch size)."""

    def __init__(self, model) -> None:
        self.model = model
        self._traced: tuple[object, object] | None = None  # (what it was traced for, the function)
        self.traces = 0  # how many times the step was traced (for tests and benchmarks)
        self.steps_run = 0  # how many elements the step ran on (the rest came from a cache)

    def _step(self, dataset, configs: dict):
        key = (str(dataset.element_spec), configs["train_config"].add_regularization_loss,
               configs["eval_config"].batch_size)
        if self._traced is not None and self._traced[0] == key:
            return self._traced[1]
        model = self.model
        add_regularization_loss = configs["train_config"].add_regularization_loss
        batch_size = configs["eval_config"].batch_size

        def eval_step(features, labels):
            self.traces += 1  # Python side effect: runs only while tracing
            boxes_shape = labels[fields.InputDataFields.groundtruth_boxes].get_shape().as_list()
            unpad = boxes_shape[1] is not None and batch_size == 1
            unstacked = model_lib.unstack_batch(labels, unpad_groundtruth_tensors=unpad)
            losses, predictions = tf_private.losses_and_predictions(model, features, unstacked,
                                                                    add_regularization_loss)
            detections = model.postprocess(predictions, features[fields.InputDataFields.true_image_shape])
            return losses, detections, labels, {name: features[name] for name in _FEATURES}

        function = tf.function(eval_step, input_signature=list(dataset.element_spec))
        self._traced = (key, function)
        return function

    def trace(self, configs: dict, dataset) -> None:
        """Trace the eval step now (in inference mode), without running it."""
        tf_private.set_inference(self.model)
        try:
            self._step(dataset, configs).get_concrete_function()
        finally:
            tf_private.set_training(self.model)

    def __call__(self, configs: dict, dataset, global_step, record=None, reuse=None,
                 before_step=None, elements=None, images: list | None = None) -> dict[str, float]:
        """The eval metrics of the live weights on every element of ``dataset`` (scalars also to the default
        summary writer, as ``eager_eval_loop`` writes them).

        ``record`` (an :class:`eval_cache.Outputs`) receives each element's step outputs; the step's outputs of
        an element found in ``reuse`` are taken from there instead of computed; ``before_step`` is called once,
        before the first element that is computed (the served evaluation loads the served weights then).
        ``elements``: the dataset's elements, already decoded (:class:`eval_cache.DecodedElements`).  ``images``:
        a list that receives the TensorBoard side-by-side images as calls that draw them later (within the
        summary writer that is the default then), instead of drawn now: off the round's critical path."""
        model = self.model
        tf_private.set_inference(model)
        step = self._step(dataset, configs)
        keyed = record is not None or reuse is not None
        eval_config = configs["eval_config"]
        options = eval_util.evaluator_options_from_eval_config(eval_config)
        agnostic_index = label_map_util.create_class_agnostic_category_index()
        aware_index = label_map_util.create_category_index_from_labelmap(
            configs["eval_input_config"].label_map_path)
        evaluators = None
        losses_seen: dict[str, list] = {}
        edges = [(edge.start, edge.end) for edge in eval_config.keypoint_edge] or None
        for index, (features, labels) in enumerate(dataset if elements is None else elements):
            key = eval_cache.element_digest(features, labels) if keyed else None
            outputs = reuse.get(key) if reuse is not None else None
            if outputs is None:
                if before_step is not None:
                    before_step()
                    before_step = None
                losses, detections, _, _ = step(features, labels)
                self.steps_run += 1
                outputs = (losses, detections)
            if record is not None:
                record.add(key, outputs)
            losses, detections = outputs
            # The step passes the element's labels and features through unchanged; prepare_eval_dict changes
            # the labels dict it is given, so it gets a fresh one (and a cached output is never changed).
            groundtruth, eval_features = dict(labels), {name: features[name] for name in _FEATURES}
            detections = dict(detections)
            eval_dict, agnostic = model_lib_v2.prepare_eval_dict(detections, groundtruth, eval_features)
            index_used = agnostic_index if agnostic else aware_index
            if fields.InputDataFields.original_image in features and index < eval_config.num_visualizations:
                if images is None:
                    _visualize(eval_dict, index, index_used, eval_config, edges, global_step)
                else:  # the step as it is now: the next round's training moves it
                    images.append(functools.partial(_visualize, eval_dict, index, index_used, eval_config, edges,
                                                    int(global_step.numpy())))
            if evaluators is None:
                evaluators = eval_util.get_evaluators(eval_config, list(index_used.values()), options)
            for evaluator in evaluators:
                evaluator.add_eval_dict(eval_dict)
            for name, value in losses.items():
                losses_seen.setdefault(name, []).append(value)
        metrics = {}
        for evaluator in evaluators or []:
            metrics.update(evaluator.evaluate())
        for name, values in losses_seen.items():
            metrics[name] = tf.reduce_mean(values)
        metrics = {str(name): float(value) for name, value in metrics.items()}
        for name, value in metrics.items():
            tf.summary.scalar(name, value, step=global_step)
        tf_private.set_training(model)
        return metrics


def _visualize(eval_dict, index, category_index, eval_config, edges, global_step) -> None:
    """TensorBoard's side-by-side images of one eval element, as ``eager_eval_loop`` writes them."""
    images = vutils.draw_side_by_side_evaluation_image(
        eval_dict, category_index=category_index, max_boxes_to_draw=eval_config.max_num_boxes_to_visualize,
        min_score_thresh=eval_config.min_score_threshold, use_normalized_coordinates=False, keypoint_edges=edges)
    for number, image in enumerate(images):
        tf.summary.image(name=f"eval_side_by_side_{index}_{number}", step=global_step, data=image,
                         max_outputs=eval_config.num_visualizations)
