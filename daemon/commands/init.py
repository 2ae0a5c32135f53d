"""``odal init`` (a ready workspace) and ``odal pretrained export`` (the converted model as a SavedModel).

A workspace written by ``odal init DIR --images IMAGES --labels a,b`` holds ``odal.toml``, ``label_map.pbtxt``,
``pipeline.config``, ``exports/`` (where ``prodigy db-out`` writes) and, for the default ``--model ssdlite``,
``pretrained/``: the fine-tuning start for these labels (the converted COCO SSDLite, class head initialised for
them).  ``--model tiny`` is the small SSD that trains from scratch (the tests' model: fast, but it needs many
labels).  TensorFlow runs only in child processes: this module is imported by the CLI and the demo.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from odal.daemon.sources import datasets
from odal.daemon.system.atomic import atomic_write_text
from odal.common.errors import ConfigError, OdalError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS = {
    "ssdlite": ASSETS / "ssdlite_mobilenet_v2_finetune.config",  # pretrained start (default)
    "tiny": ASSETS / "ssd_mobilenet_v2_tiny.config",  # from scratch
}
START_TYPE = "full"  # restore all of the start: feature extractor, extra SSD layers, box head (+ the fresh class head)
PLACEHOLDER = '"PRETRAINED_START"'
DEFAULT_STEPS = {"ssdlite": 150, "tiny": 200}


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",")]
    if not labels or any(not label for label in labels) or len(set(labels)) != len(labels):
        raise ConfigError(f"--labels: distinct, non-empty names separated by commas, got {text!r}")
    if any(re.search(r"['\"\\\n]", label) for label in labels):
        raise ConfigError(f"--labels: quotes, backslashes and newlines are not allowed in a label, got {text!r}")
    return labels


def write_start(start_dir: Path, labels: list[str], pipeline_config: Path, timeout: float = 600) -> Path:
    """The fine-tuning start for ``labels`` in ``start_dir`` (a TensorFlow child process); its checkpoint prefix."""
    proc = subprocess.run([sys.executable, "-m", "odal.daemon.worker.pretrained", "--start", str(start_dir),
                           "--labels", ",".join(labels), "--config", str(pipeline_config)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise OdalError(f"could not write the pretrained start: {proc.stderr.strip()[-2000:]}")
    from odal.daemon.worker.pretrained import checkpoint_prefix  # no TensorFlow at import

    return checkpoint_prefix(start_dir)


def write_workspace(workspace: Path, data_dir: Path, labels: list[str], model: str = "ssdlite",
                    steps: int | None = None, per_round: int = 10, serving_address: str = "",
                    debounce_seconds: float = 5.0, header: str = "odal init") -> Path:
    """A complete workspace folder; returns its ``odal.toml``."""
    if model not in MODELS:
        raise ConfigError(f"--model: one of {', '.join(MODELS)}, got {model!r}")
    steps = steps or DEFAULT_STEPS[model]
    workspace = workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "exports").mkdir(exist_ok=True)
    datasets.write_label_map(workspace / "label_map.pbtxt", labels)
    pipeline = MODELS[model].read_text()
    fine_tune = ""
    if model == "ssdlite":
        # The start is named twice: in pipeline.config (train_config.fine_tune_checkpoint, the OD API's own
        # convention) and in odal.toml, which odal reads for the first round.
        prefix = write_start(workspace / "pretrained", labels, MODELS[model])
        pipeline = pipeline.replace(PLACEHOLDER, f'"{prefix}"')
        pipeline = pipeline.replace('fine_tune_checkpoint_type: "full"',
                                    f'fine_tune_checkpoint_type: "{START_TYPE}"')
        fine_tune = (f'fine_tune_checkpoint = "{prefix}"   # the pretrained start, for the first round\n'
                     f'fine_tune_checkpoint_type = "{START_TYPE}"\n')
    atomic_write_text(workspace / "pipeline.config", pipeline)
    config = workspace / "odal.toml"
    atomic_write_text(config, f"""# odal workspace (written by `{header}`; model {model})
[prodigy]
export_dir = "exports"

[paths]
data_dir = "{data_dir.resolve()}"
work_dir = "work"

[model]
name = "odal"
pipeline_config = "pipeline.config"
label_map = "label_map.pbtxt"
base_path = "models/odal"
{fine_tune}
[training]
steps_per_round = {steps}
min_new_annotations = {per_round}
debounce_seconds = {debounce_seconds}
eval_fraction = 0.2

[retention]
versions = 3
checkpoints = 2

[serving]
address = "{serving_address}"
confirm_timeout_seconds = 120

[log]
file = "work/logs/daemon.jsonl"
""")
    return config


def add_parsers(sub) -> None:
    p = sub.add_parser("init", help="write a ready workspace: odal.toml, label map, a pipeline.config that "
                       "fine-tunes the pretrained SSDLite (or the tiny from-scratch SSD), exports/")
    p.add_argument("workspace", help="the folder to write (new or empty)")
    p.add_argument("--images", required=True, help="the images the annotators see (Prodigy's SOURCE)")
    p.add_argument("--labels", required=True, help="the class names, comma-separated: a,b")
    p.add_argument("--model", choices=sorted(MODELS), default="ssdlite",
                   help="ssdlite: fine-tune the pretrained start (default); tiny: train from scratch")
    p.add_argument("--steps", type=int, default=None, help="train steps per round")
    p = sub.add_parser("pretrained", help="the pretrained start converted at install time")
    action = p.add_subparsers(dest="action", required=True)
    e = action.add_parser("export", help="the converted model with its own class (person) as a SavedModel")
    e.add_argument("dir", help="where the SavedModel goes (new or empty)")


def run(args: argparse.Namespace) -> int:
    if args.command == "pretrained":
        proc = subprocess.run([sys.executable, "-m", "odal.daemon.worker.pretrained", "--export", args.dir])
        return proc.returncode
    workspace, images = Path(args.workspace), Path(args.images)
    if not images.is_dir():
        raise ConfigError(f"--images: no such directory: {images}")
    if workspace.exists() and any(workspace.iterdir()):
        raise ConfigError(f"{workspace} exists and is not empty; odal init writes a new workspace")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
    labels = _labels(args.labels)
    try:
        config = write_workspace(workspace, images, labels, args.model, args.steps)
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)  # nothing half-written stays
        raise
    print(f"workspace {workspace.resolve()} ({args.model}, labels {', '.join(labels)}); start the daemon with\n"
          f"  odal-daemon --config {config}")
    return 0
