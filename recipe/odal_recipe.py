"""odal.correct: correct the served model's boxes, most informative images first. It never trains.

    prodigy odal.correct DATASET SOURCE --workspace WORKSPACE -F recipe/odal_recipe.py [--label A,B]
        [--server 127.0.0.1:8500] [--model odal] [--threshold 0.3] [--order uncertainty|diverse|file|random]
        [--batch-size 10] [--wait 60] [--data-dir DIR]

``--workspace`` is the daemon's workspace folder (with ``odal.toml``) or that ``odal.toml``, as for ``odal
status`` (default: ``$ODAL_CONFIG``, else the current folder); the labels, in the label map's order, the data
dir, the work dir (queue, answered images), the serving address and the model name come from it
(:mod:`odal.recipe.workspace`). ``--label`` only chooses which labels are shown.

Works with Prodigy >= 1.12 (``prodigy.core.recipe`` + ``Arg``) and older releases (``prodigy.recipe`` with tuple
annotations); without Prodigy this module still imports (nothing is registered) and :func:`correct` can be called.
Install: recipe/README.md.
"""

import os
from pathlib import Path
from typing import List, Optional

from odal.recipe.predictor import Predictor
from odal.recipe.stream import StreamOptions, build_stream
from odal.recipe.tasks import before_db, own_hashes
from odal.recipe.workspace import load_workspace, select_labels

# name: (flags, help, converter for the old tuple API); one table for both APIs so --help lists every option.
ARGS = {
    "dataset": ((), "Dataset to save the answers to", str),
    "source": ((), "Folder of images to annotate (searched recursively)", str),
    "label": (("--label", "-l"), "Comma-separated labels to show, any order (default: every label of the "
                                 "workspace's label map)", None),
    "server": (("--server", "-s"), "gRPC address of the model server (default: the workspace's "
                                   "serving.address, else 127.0.0.1:8500)", str),
    "model": (("--model", "-m"), "Model name on the server (default: the workspace's model.name)", str),
    "threshold": (("--threshold", "-t"), "Lowest score of a suggested box", float),
    "order": (("--order", "-o"), "Task order: uncertainty (most informative first), diverse (informative, unlike "
                                 "each other and rare classes too), file or random (default: the workspace's "
                                 "queue.strategy)", str),
    "batch_size": (("--batch-size", "-b"), "Tasks per batch sent to the web app", int),
    "workspace": (("--workspace", "-w"), "The workspace folder (with odal.toml) or its odal.toml, as for "
                                         "`odal status` (default: $ODAL_CONFIG, else the current folder)", str),
    "data_dir": (("--data-dir", "-d"), "Saved paths are relative to this folder (default: the workspace's "
                                       "paths.data_dir)", str),
    "wait": (("--wait", "-W"), "Seconds to wait for a model that is still loading before the first images", float),
}


def correct(dataset: str, source: str, label: Optional[List[str]] = None, server: Optional[str] = None,
            model: Optional[str] = None, threshold: float = 0.3, order: Optional[str] = None, batch_size: int = 10,
            workspace: Optional[str] = None, data_dir: Optional[str] = None, wait: float = 60.0,
            hasher=None) -> dict:
    ws = load_workspace(workspace or os.environ.get("ODAL_CONFIG") or ".")
    options = StreamOptions(  # validated here, once
        source=Path(source), labels=ws.labels, shown=select_labels(ws.labels, label, ws.label_map),
        threshold=threshold, order=order or ws.order, batch_size=batch_size, work_dir=ws.work_dir, queue_batch=ws.batch,
        data_dir=Path(data_dir) if data_dir else ws.data_dir)
    predictor = Predictor(server or ws.server, model or ws.model, wait_seconds=wait)
    stream = build_stream(options, predictor, hasher or own_hashes)

    def on_exit(_controller=None) -> None:
        stream.close()
        predictor.close()

    return {
        "dataset": dataset,  # where Prodigy saves the answers
        "view_id": "image_manual",  # boxes drawn on the image, editable
        "stream": iter(stream),  # prefetched tasks with the model's boxes
        "before_db": before_db,  # keep the image path, not the base64 data
        "on_exit": on_exit,  # stop the prefetch thread and close the channel
        "config": {"labels": list(options.shown), "batch_size": batch_size, "image_manual_modes": ["rect"],
                   "exclude_by": "input"},  # one answer per image
    }


def _register() -> str | None:
    """Register ``odal.correct`` with whichever Prodigy API is installed; returns which, None without Prodigy."""
    try:
        from prodigy.util import set_hashes

        def hasher(task, _data):
            return set_hashes(task, overwrite=True)
    except ImportError:
        return None

    def odal_correct(dataset: str, source: str, label: Optional[List[str]] = None, server: Optional[str] = None,
                     model: Optional[str] = None, threshold: float = 0.3, order: Optional[str] = None,
                     batch_size: int = 10, workspace: Optional[str] = None, data_dir: Optional[str] = None,
                     wait: float = 60.0) -> dict:
        """Correct the served model's boxes on SOURCE's images, most informative first (never trains)."""
        return correct(dataset, source, label, server, model, threshold, order, batch_size, workspace, data_dir,
                       wait, hasher=hasher)

    try:
        from prodigy.core import Arg, recipe
    except ImportError:
        from prodigy import recipe
        from prodigy.util import split_string

        legacy = {name: (text, "option" if flags else "positional", flags[1][1:] if flags else None,
                         conv or split_string) for name, (flags, text, conv) in ARGS.items()}
        recipe("odal.correct", **legacy)(odal_correct)
        return "legacy"
    recipe("odal.correct", **{name: Arg(*flags, help=text) for name, (flags, text, _c) in ARGS.items()})(odal_correct)
    return "core"


PRODIGY_API = _register()
