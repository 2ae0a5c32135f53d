"""odal.correct: correct the served model's boxes, most informative images first. It never trains.

    prodigy odal.correct DATASET SOURCE --label A,B -F recipe/odal_recipe.py [--server 127.0.0.1:8500]
        [--model odal] [--threshold 0.3] [--order uncertainty|file|random] [--batch-size 10] [--workspace WORK_DIR]

Works with Prodigy >= 1.12 (``prodigy.core.recipe`` + ``Arg``) and older releases (``prodigy.recipe`` with tuple
annotations); without Prodigy this module still imports (nothing is registered) and :func:`correct` can be called.
"""

from pathlib import Path
from typing import List, Optional

from odal.recipe.predictor import Predictor
from odal.recipe.stream import StreamOptions, build_stream
from odal.recipe.tasks import before_db, own_hashes

# name: (flags, help, converter for the old tuple API); one table for both APIs so --help lists every option.
ARGS = {
    "dataset": ((), "Dataset to save the answers to", str),
    "source": ((), "Folder of images to annotate (searched recursively)", str),
    "label": (("--label", "-l"), "Comma-separated labels in label-map order (id 1 first)", None),
    "server": (("--server", "-s"), "gRPC address of the model server (odal serve / TF Serving)", str),
    "model": (("--model", "-m"), "Model name on the server", str),
    "threshold": (("--threshold", "-t"), "Lowest score of a suggested box", float),
    "order": (("--order", "-o"), "Task order: uncertainty (most informative first), file or random", str),
    "batch_size": (("--batch-size", "-b"), "Tasks per batch sent to the web app", int),
    "workspace": (("--workspace", "-w"), "The daemon's work dir: read its queue and skip answered images", str),
    "data_dir": (("--data-dir", "-d"), "The daemon's data dir (saved paths are relative to it)", str),
}


def correct(dataset: str, source: str, label: List[str], server: str = "127.0.0.1:8500", model: str = "odal",
            threshold: float = 0.3, order: str = "uncertainty", batch_size: int = 10,
            workspace: Optional[str] = None, data_dir: Optional[str] = None, hasher=None) -> dict:
    labels = tuple(label.split(",") if isinstance(label, str) else label)
    options = StreamOptions(  # validated here, once
        source=Path(source), labels=tuple(name.strip() for name in labels if name.strip()), threshold=threshold,
        order=order, batch_size=batch_size, workspace=Path(workspace) if workspace else None,
        data_dir=Path(data_dir) if data_dir else None)
    predictor = Predictor(server, model)
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
        "config": {"labels": list(options.labels), "batch_size": batch_size, "image_manual_modes": ["rect"],
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

    def odal_correct(dataset: str, source: str, label: List[str], server: str = "127.0.0.1:8500",
                     model: str = "odal", threshold: float = 0.3, order: str = "uncertainty", batch_size: int = 10,
                     workspace: Optional[str] = None, data_dir: Optional[str] = None) -> dict:
        """Correct the served model's boxes on SOURCE's images, most informative first (never trains)."""
        return correct(dataset, source, label, server, model, threshold, order, batch_size, workspace, data_dir,
                       hasher=hasher)

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
