"""Which model versions to serve: TF Serving's model config and its file-system version discovery, as pure logic.

A model is a base path; every child folder whose name parses as an integer is a version (``.staging-3``,
``tmp`` and the like are ignored, as is odal's graph template ``.odal-template``: serving/template.py).  The version policy picks the *aspired* versions among them: ``latest``
(the N highest, default 1), ``all``, or ``specific`` (those listed that exist).  Nothing here loads anything:
the registry compares the aspired set with what is loaded and acts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from google.protobuf import text_format

from odal.serving._protos import model_server_config_pb2
from odal.serving.errors import ServingError, invalid_argument

ModelServerConfig = model_server_config_pb2.ModelServerConfig
TENSORFLOW_PLATFORM = "tensorflow"
_VERSION = re.compile(r"[+-]?[0-9]+")
TEMPLATE_DIR = ".odal-template"  # <base_path>/.odal-template: a graph loaded ahead, never a version (template.py)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class VersionPolicy:
    """``kind`` is ``latest``, ``latest_once``, ``all`` or ``specific``; ``num_versions`` for the latest kinds."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, versions: Mapping[int, str]) -> dict[int, str]:
        """The aspired subset of ``versions`` (version -> folder name)."""
        if self.kind in ("latest", "latest_once"):
            newest = sorted(versions, reverse=True)[: max(self.num_versions, 1)]
            return {v: versions[v] for v in newest}
        if self.kind == "all":
            return dict(versions)
        return {v: name for v, name in versions.items() if v in self.versions}


@dataclass(frozen=True)
class ModelSource:
    """One model of the config: where its versions appear and which of them to serve."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)

    def aspired(self) -> dict[int, str] | None:
        """Aspired version -> full path, from the folder as it is now; None if the base path is missing."""
        found = list_versions(self.base_path)
        if found is None:
            return None
        return {v: os.path.join(self.base_path, name) for v, name in self.policy.select(found).items()}


def parse_version(name: str) -> int | None:
    """The version a child folder name stands for, or None (TF Serving's ``safe_strto64`` rule)."""
    text = name.strip(" \t\n\v\f\r")
    if not _VERSION.fullmatch(text):
        return None
    number = int(text)
    return number if -_INT64_MAX - 1 <= number <= _INT64_MAX else None


def list_versions(base_path: str | os.PathLike) -> dict[int, str] | None:
    """Version -> child folder name for every integer-named child of ``base_path``; None if it does not exist.

    Two names for one number (``1`` and ``01``): the later in sorted order wins, as in TF Serving.
    """
    try:
        children = sorted(os.listdir(base_path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    found: dict[int, str] = {}
    for child in children:
        version = parse_version(child)
        if version is not None:
            found[version] = child
    return found


def _policy(proto) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")
    if choice is None or choice == "latest":
        return VersionPolicy("latest", proto.latest.num_versions or 1)
    if choice == "latest_once":
        return VersionPolicy("latest_once", proto.latest_once.num_versions or 1)
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(proto.specific.versions))
    raise invalid_argument(f"unhandled servable version_policy: {choice}")


def _platform(config) -> str:
    if config.model_type:
        if config.model_platform:
            raise invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform.")
        return TENSORFLOW_PLATFORM
    if not config.model_platform:
        raise invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform.")
    return config.model_platform


def sources(config: ModelServerConfig) -> list[ModelSource]:
    """The models of a ModelServerConfig, validated the way TF Serving validates a ``model_config_list``."""
    if config.WhichOneof("config") == "custom_model_config":
        raise invalid_argument("custom_model_config is not supported; use model_config_list")
    result: list[ModelSource] = []
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not os.path.isabs(model.base_path) and "://" not in model.base_path:
            raise invalid_argument(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}")
        if "://" in model.base_path:
            raise invalid_argument(f"Model {model.name}: only local base paths are supported, got {model.base_path}")
        platform = _platform(model)
        if platform != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {model.name} requests unsupported platform {platform}")
        result.append(ModelSource(model.name, model.base_path, _policy(model.model_version_policy),
                                  dict(model.version_labels)))
    return result


def parse_config_text(text: str, origin: str = "model config") -> ModelServerConfig:
    """A ModelServerConfig from its text-proto form (the ``--model_config_file`` format)."""
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise invalid_argument(f"Invalid protobuf file: '{origin}': {exc}") from None
    return config


def read_config_file(path: str | os.PathLike) -> ModelServerConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ServingError("NOT_FOUND", f"{path}: {exc.strerror}") from None
    return parse_config_text(text, str(path))


def single_model_config(name: str, base_path: str | os.PathLike) -> ModelServerConfig:
    """The config ``--model_name``/``--model_base_path`` stand for (the base path made absolute)."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = os.path.abspath(base_path)
    model.model_platform = TENSORFLOW_PLATFORM
    return config
