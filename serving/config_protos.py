"""TF Serving's ``MonitoringConfig`` and ``BatchingParameters`` text protos, read with protobuf's own parser.

The pip packages odal installs carry TF Serving's API protos but not these two (``monitoring_config.proto`` and
``session_bundle_config.proto``), so their messages are declared here, field for field (names and numbers as in
TF Serving 2.x), in a private descriptor pool; ``text_format`` then reads the very files given to
``tensorflow_model_server --monitoring_config_file / --batching_parameters_file``.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from odal.serving.errors import ServingError

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
MAX_CONFIG_BYTES = 1 << 20
_F = descriptor_pb2.FieldDescriptorProto


def _field(message, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> None:
    field = message.field.add(name=name, number=number, type=kind,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


def _build():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(name="odal/tfserving_configs.proto", package="tensorflow.serving",
                                              syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    prometheus = file.message_type.add(name="PrometheusConfig")
    _field(prometheus, "enable", 1, _F.TYPE_BOOL)
    _field(prometheus, "path", 2, _F.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    _field(monitoring, "prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    batching = file.message_type.add(name="BatchingParameters")
    int64, boolean = ".google.protobuf.Int64Value", ".google.protobuf.BoolValue"
    for name, number in (("max_batch_size", 1), ("batch_timeout_micros", 2), ("max_enqueued_batches", 3),
                         ("num_batch_threads", 4)):
        _field(batching, name, number, _F.TYPE_MESSAGE, int64)
    _field(batching, "thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue")
    _field(batching, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    _field(batching, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    _field(batching, "enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, boolean)
    _field(batching, "max_execution_batch_size", 9, _F.TYPE_MESSAGE, int64)
    pool.AddSerializedFile(file.SerializeToString())
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("MonitoringConfig", "BatchingParameters"))


MonitoringConfig, BatchingParameters = _build()


def read_text_proto(path: str, message_class):
    """A text-format file as ``message_class``; errors name the file and line (``INVALID_ARGUMENT``)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ServingError("INVALID_ARGUMENT", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ServingError("INVALID_ARGUMENT", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    message = message_class()
    try:
        text_format.Parse(data.decode("utf-8"), message)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ServingError("INVALID_ARGUMENT", f"{path}: not a text {message_class.DESCRIPTOR.name}: {exc}") from None
    return message


def metrics_path(path: str) -> str | None:
    """The path Prometheus metrics are served at, from a MonitoringConfig file (None: not enabled)."""
    config = read_text_proto(path, MonitoringConfig)
    if not config.prometheus_config.enable:
        return None
    where = config.prometheus_config.path or DEFAULT_METRICS_PATH
    if not where.startswith("/"):
        raise ServingError("INVALID_ARGUMENT", f"{Path(path)}: prometheus_config.path must start with /: {where!r}")
    return where


__all__ = ["BatchingParameters", "DEFAULT_METRICS_PATH", "MonitoringConfig", "metrics_path", "read_text_proto"]
