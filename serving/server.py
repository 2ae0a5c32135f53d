"""``odal serve``: a TF Serving-compatible model server in one Python process (gRPC + REST).

Flags carry TF Serving's names, so the same command line (and the same model base path or ``models.config``)
works with ``tensorflow_model_server``.  Differences, on purpose: everything binds to ``--host`` (127.0.0.1
unless told otherwise); ``--enable_batching`` is on unless set false, with odal's measured parameters when no
``--batching_parameters_file`` is given (same answers, more throughput under concurrent clients, no wait for a
lone request); ``--rest_api_port`` defaults to 8501 (0 disables REST); the servers start at once rather
than after the first models have loaded (clients wait with ``ServingClient.wait_until_available``).

Run as ``python -m odal.serving.server --model_name=detector --model_base_path=/var/lib/odal/models/detector``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from odal.serving import discovery
from odal.serving.errors import ServingError
from odal.serving.limits import DEFAULT as _D
from odal.serving.limits import Limits

log = logging.getLogger("odal.serving")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odal serve", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port (TF Serving's --port)")
    add("--rest_api_port", type=int, default=8501, help="REST port; 0 disables the REST API")
    add("--host", default="127.0.0.1", help="address both servers bind to (default loopback only)")
    add("--grpc_host", default=None, help="address of the gRPC server alone (overrides --host)")
    add("--rest_api_host", default=None, help="address of the REST server alone (overrides --host)")
    add("--model_name", default="default", help="model name when --model_base_path is used")
    add("--model_base_path", default="", help="folder whose integer-named subfolders are the model's versions")
    add("--model_config_file", default="", help="a ModelServerConfig text proto (model_config_list)")
    add("--model_config_file_poll_wait_seconds", type=int, default=0,
        help="re-read --model_config_file this often; 0 reads it once")
    add("--file_system_poll_wait_seconds", type=int, default=1,
        help="look for new versions this often; 0 looks once")
    add("--file_system_watch", type=_bool, nargs="?", const=True, default=True,
        help="also look for new versions as soon as inotify sees a base path change (odal only; watch.py)")
    add("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
        help="replay a version's assets.extra/tf_serving_warmup_requests before it serves (TF Serving's)")
    add("--reuse_loaded_graph", type=_bool, nargs="?", const=True, default=True,
        help="a version whose saved_model.pb and assets equal a loaded one's: read its variables only (odal only)")
    add("--num_request_iterations_for_warmup", type=int, default=1, help="times each warm-up request runs")
    add("--max_num_load_retries", type=int, default=5, help="retries of a failed version load (TF Serving: 5)")
    add("--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries")
    add("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True, default=False,
        help="let a label name a version that is not loaded yet")
    add("--grpc_max_threads", type=int, default=16, help="gRPC worker threads")
    add("--rest_api_num_threads", type=int, default=0, help="threads running REST requests; 0 = 4 per CPU")
    add("--rest_api_timeout_in_ms", type=int, default=int(_D.rest_request_timeout * 1000),
        help="time to receive a REST request, and to answer it (504 after)")
    add("--rest_api_max_body_bytes", type=int, default=_D.rest_max_body_bytes,
        help="larger REST bodies are answered 413 without being read")
    add("--rest_api_idle_timeout_seconds", type=float, default=_D.rest_idle_timeout,
        help="close a REST connection with no request in flight after this")
    add("--rest_api_max_inflight_bytes", type=int, default=_D.rest_max_inflight_bytes,
        help="REST request bodies held at once over all connections; beyond this 503")
    add("--rest_api_max_connections", type=int, default=_D.rest_max_connections,
        help="open REST connections beyond this are answered 503")
    add("--grpc_max_message_bytes", type=int, default=_D.grpc_max_message_bytes,
        help="largest gRPC message received or sent (TF Serving: 2 GB)")
    add("--max_tensor_bytes", type=int, default=_D.max_tensor_bytes,
        help="a request tensor declaring more bytes than this is INVALID_ARGUMENT")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=True,
        help="run concurrent predicts of a batchable signature as one call (see batching.py); on unless "
             "--enable_batching=false (TF Serving: off)")
    add("--batching_parameters_file", default="",
        help="a text BatchingParameters (max_batch_size ...); without it odal's measured best "
             "(batching.ODAL_DEFAULT, as batching_parameters.txt), not TF Serving's defaults")
    add("--monitoring_config_file", default="",
        help="a text MonitoringConfig; prometheus_config { enable: true } serves metrics on the REST port")
    add("--tensorflow_intra_op_parallelism", type=_count, default=0,
        help="threads one TensorFlow op may use; 0 lets TensorFlow choose (TF Serving's)")
    add("--tensorflow_inter_op_parallelism", type=_count, default=0,
        help="TensorFlow ops run at once; 0 lets TensorFlow choose (TF Serving's)")
    add("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _initial_config(args) -> discovery.ModelServerConfig:
    if args.model_config_file:
        return discovery.read_config_file(args.model_config_file)
    if args.model_base_path:
        return discovery.single_model_config(args.model_name, args.model_base_path)
    raise ServingError("INVALID_ARGUMENT", "Both server_model_config_file and model_base_path are empty!")


def limits_from(args) -> Limits:
    """The request bounds the flags ask for (validated once, here)."""
    limits = Limits(rest_max_body_bytes=args.rest_api_max_body_bytes,
                    rest_request_timeout=args.rest_api_timeout_in_ms / 1000,
                    rest_idle_timeout=args.rest_api_idle_timeout_seconds,
                    rest_max_connections=args.rest_api_max_connections, rest_workers=args.rest_api_num_threads,
                    rest_max_inflight_bytes=args.rest_api_max_inflight_bytes,
                    grpc_max_message_bytes=args.grpc_max_message_bytes, max_tensor_bytes=args.max_tensor_bytes)
    for name in ("rest_max_body_bytes", "rest_max_inflight_bytes", "rest_request_timeout", "rest_idle_timeout", "rest_max_connections",
                 "grpc_max_message_bytes", "max_tensor_bytes"):
        if getattr(limits, name) <= 0:
            raise ServingError("INVALID_ARGUMENT", f"{name} must be positive, got {getattr(limits, name)}")
    return limits


def _tensorflow_threads(args) -> None:
    """TF Serving's --tensorflow_{intra,inter}_op_parallelism, set before TensorFlow runs anything (0: its own)."""
    if args.tensorflow_intra_op_parallelism or args.tensorflow_inter_op_parallelism:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
        log.info("TensorFlow threads: intra-op %d, inter-op %d (0: TensorFlow's choice)",
                 args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism)


def _watch_config_file(registry, path: str, every: int, stop: threading.Event) -> None:
    current = None
    while not stop.wait(every):
        try:
            config = discovery.read_config_file(path)
            text = config.SerializeToString(deterministic=True)
            if text != current:
                registry.reload(config)
                current = text
        except ServingError as exc:
            log.error("model config file %s not reloaded: %s", path, exc)


def main(argv: list[str]) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(args, stop)
    except ServingError as exc:
        log.error("%s", exc)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(args, stop: threading.Event) -> int:
    from odal.common.sdnotify import Notifier
    from odal.serving import grpc_api, rest_api, warmup
    from odal.serving.registry import Registry
    from odal.serving.template import Templates

    from odal.serving import batching, config_protos, predict

    config = _initial_config(args)
    limits = limits_from(args)
    _tensorflow_threads(args)
    metrics_path = config_protos.metrics_path(args.monitoring_config_file) if args.monitoring_config_file else None
    batcher = None
    if args.enable_batching:
        params = batching.ODAL_DEFAULT
        if args.batching_parameters_file:
            params = batching.Parameters.from_proto(config_protos.read_text_proto(
                args.batching_parameters_file, config_protos.BatchingParameters))
        batcher = batching.Batcher(params)
        predict.use_batcher(batcher)
        log.info("batching predicts: %s", params)
    load = warmup.loader(args.enable_model_warmup, limits, args.num_request_iterations_for_warmup,
                          args.reuse_loaded_graph)
    templates = Templates(load.loader) if args.reuse_loaded_graph else None  # <base>/.odal-template, loaded ahead
    registry = Registry(load, poll_seconds=args.file_system_poll_wait_seconds,
                        max_load_retries=args.max_num_load_retries,
                        retry_interval=args.load_retry_interval_micros / 1e6,
                        allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
                        watch=args.file_system_watch and args.file_system_poll_wait_seconds > 0,
                        on_poll=templates.poll if templates else None)
    registry.reload(config)
    notifier = Notifier()
    grpc_server = rest_server = None
    registry.start()
    try:
        grpc_host = args.grpc_host or args.host
        grpc_server, grpc_port = grpc_api.make_server(registry, f"{grpc_host}:{args.port}", args.grpc_max_threads,
                                                      limits)
        grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", grpc_host, grpc_port)
        if args.rest_api_port:
            rest_host = args.rest_api_host or args.host
            rest_server = rest_api.RestServer(registry, rest_host, args.rest_api_port, limits, metrics_path)
            rest_server.start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", rest_host, rest_server.port)
        if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=_watch_config_file, daemon=True, name="odal-config-watch",
                             args=(registry, args.model_config_file, args.model_config_file_poll_wait_seconds,
                                   stop)).start()
        notifier.ready()
        notifier.status(f"serving {', '.join(registry.model_names())} on gRPC {grpc_host}:{grpc_port}")
        stop.wait()
        notifier.stopping()
        log.info("shutting down")
        return 0
    finally:
        stop.set()
        if rest_server is not None:
            rest_server.close()
        if grpc_server is not None:
            grpc_server.stop(grace=5).wait(10)
        registry.stop()
        if batcher is not None:
            predict.use_batcher(None)
            batcher.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
