"""What the recipe takes from a workspace: its labels (from the label map, by id), data dir, work dir, serving
address and model name.

``--workspace`` means what it means for ``odal status``: the workspace folder (with ``odal.toml``) or that
``odal.toml`` itself.  The file is read with the daemon's own loader (:func:`odal.daemon.config.load`; no
TensorFlow), so the recipe and the daemon cannot disagree about a path or a label.

Labels are never typed in order by hand: class id ``k`` of the model is always the label map's item ``k``.
``--label`` only chooses which of those labels the annotators see (and may draw); a name that is not in the label
map is an error naming the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from odal.daemon import config as config_module
from odal.common.errors import ConfigError
from odal.daemon.sources.label_map import load_label_map

DEFAULT_SERVER = "127.0.0.1:8500"  # TF Serving's gRPC port, when the workspace sets no serving.address


@dataclass(frozen=True)
class RecipeWorkspace:
    config_path: Path
    label_map: Path
    labels: tuple[str, ...]  # every label, ordered by id: class id k is labels[k - 1]
    data_dir: Path
    work_dir: Path
    server: str
    model: str


def config_file(workspace: str | Path) -> Path:
    """The ``odal.toml`` of ``workspace`` (a workspace folder, or the file itself)."""
    path = Path(workspace).expanduser().resolve()
    return path if path.is_file() else config_module.workspace_config(path)


def load_workspace(workspace: str | Path) -> RecipeWorkspace:
    """Read the workspace's configuration and label map; raises ConfigError with a message naming the file."""
    path = config_file(workspace)
    if not path.is_file():
        raise ConfigError(f"--workspace {workspace}: no odal.toml at {path} (give the workspace folder or its "
                          "odal.toml, as for `odal status --workspace`)")
    cfg = config_module.load(path)
    return RecipeWorkspace(config_path=path, label_map=cfg.label_map, labels=tuple(load_label_map(cfg.label_map)),
                           data_dir=cfg.data_dir, work_dir=cfg.work_dir,
                           server=cfg.serving_address or DEFAULT_SERVER, model=cfg.model_name)


def select_labels(labels: Iterable[str], requested: str | Iterable[str] | None, label_map: Path) -> tuple[str, ...]:
    """The labels to show: ``requested`` (comma-separated or a list; None or empty: all), in label-map order.

    Raises ConfigError naming ``label_map`` when a requested label is not in it."""
    labels = tuple(labels)
    if requested is None:
        return labels
    items = [requested] if isinstance(requested, str) else [str(item) for item in requested]
    parts = [part for item in items for part in item.split(",")]
    wanted = {name.strip() for name in parts if name.strip()}
    unknown = sorted(wanted.difference(labels))
    if unknown:
        raise ConfigError(f"--label {', '.join(unknown)}: not in the label map {label_map} (its labels, by id: "
                          f"{', '.join(labels)})")
    return tuple(name for name in labels if name in wanted) or labels
