"""Two SavedModels of one checkpoint for bench/bench_serving_batching.py: the stock OD API export (input_tensor
uint8 [1,H,W,3], ``exporter_lib_v2.DetectionFromImageModule`` plus odal's ``image_embedding``, as odal exported
before) and odal's export now ([None,H,W,3], ``embedding.DetectionWithEmbeddingModule``).

    python bench/export_batched.py --pipeline-config WS/pipeline.config --checkpoint WS/work/checkpoints/round-3/ckpt \\
        --num-classes 2 OUT_STOCK OUT_ODAL

``--num-classes``: the label map's classes (odal fills the config's in at round time).  Not a test.
"""

from __future__ import annotations

import argparse
import sys

from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede object_detection)

import tensorflow as tf
from object_detection import exporter_lib_v2
from object_detection.builders import model_builder
from object_detection.utils import config_util

from odal.daemon.worker.embedding import DetectionWithEmbeddingModule


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("stock")
    parser.add_argument("odal")
    args = parser.parse_args(argv)
    configs = config_util.get_configs_from_pipeline_file(args.pipeline_config)
    getattr(configs["model"], configs["model"].WhichOneof("model")).num_classes = args.num_classes
    model = model_builder.build(model_config=configs["model"], is_training=False)
    tf.train.Checkpoint(model=model).restore(args.checkpoint).expect_partial()
    odal = DetectionWithEmbeddingModule(model)

    class Stock(DetectionWithEmbeddingModule):  # the OD API's own [1,H,W,3] signature, same outputs
        def __init__(self, detection_model):
            exporter_lib_v2.DetectionFromImageModule.__init__(self, detection_model)

    stock = Stock(model)
    for module, out in ((stock, args.stock), (odal, args.odal)):
        tf.saved_model.save(module, out, signatures={"serving_default": module.__call__.get_concrete_function()})
        print(out, module.__call__.input_signature)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
