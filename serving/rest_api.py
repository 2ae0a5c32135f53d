"""TF Serving's REST API (``/v1/models/...``) on odal's bounded HTTP server (``http_server``).

Routes, as TF Serving parses them (case-insensitive, model name and label URL-decoded):

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    model metadata
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     predict (row or columnar JSON)

Any other ``/v1/`` request is ``Malformed request`` (400); a path outside ``/v1/`` is a bare 404.  Every error
body is ``{"error": "<message>"}`` with the HTTP status TF Serving maps the error code to.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse

from google.protobuf import json_format

from odal.serving import grpc_api, predict, rest_fast, rest_json
from odal.serving.errors import ServingError, capped, invalid_argument
from odal.serving.http_server import HttpServer
from odal.serving.limits import DEFAULT, Limits
from odal.serving.registry import Registry

log = logging.getLogger(__name__)

_V1 = re.compile(r"(?i)/v1/.*")
_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_INT64_MAX = 2**63 - 1


def _target(name: str, version: str | None, label: str | None) -> predict.Target:
    name = urllib.parse.unquote(name or "")
    number = None
    if version:
        number = int(version)
        if number > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return predict.Target(name, number, urllib.parse.unquote(label) if label else None)


class RestApi:
    """The request logic, independent of the HTTP server: (method, path, body) -> (HTTP status, JSON text)."""

    def __init__(self, registry: Registry, max_error_chars: int = DEFAULT.rest_max_error_chars):
        self._registry = registry
        self._max_error_chars = max_error_chars

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as exc:
            return exc.http_status, json.dumps({"error": capped(exc.message, self._max_error_chars)})
        except RecursionError:
            return 400, json.dumps({"error": "the request is nested too deeply"})
        except Exception as exc:  # noqa: BLE001 - an answer, never a dropped connection
            log.exception("REST %s %s failed", method, capped(path, 200))
            return 500, json.dumps({"error": capped(f"{type(exc).__name__}: {exc}", self._max_error_chars)})

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if not match:
                raise malformed
            if match.group(4).lower() != "predict":
                raise ServingError("UNIMPLEMENTED", f"{match.group(4)} is not supported by odal serve; use predict")
            return self._predict(_target(*match.group(1, 2, 3)), body)
        if method == "GET":
            match = _STATUS.fullmatch(path)
            if not match:
                raise malformed
            target = _target(*match.group(1, 2, 3))
            if not target.name:
                raise invalid_argument("Missing model name in request.")
            if match.group(4):
                return _metadata_json(grpc_api.metadata_response(self._registry, target,
                                                                 [grpc_api.SIGNATURE_DEF_FIELD]))
            return json_format.MessageToJson(grpc_api.status_response(self._registry, target), indent=1,
                                             always_print_fields_with_no_presence=True)
        raise malformed

    def _predict(self, target: predict.Target, body: bytes) -> str:
        fast = rest_fast.split(body)
        doc = fast[0] if fast is not None else rest_json.parse_body(body)
        signature_name = rest_json.signature_name(doc)
        _version, servable = self._registry.servable(target.name, target.version, target.label)
        name = signature_name or predict.DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(name)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
        dtypes = {alias: info.dtype for alias, info in signature.inputs.items()}
        parsed = rest_fast.request_tensors(fast, dtypes) if fast is not None else None
        if parsed is None and fast is not None:
            doc = rest_json.parse_body(body)  # not the fast path's case: the whole body the ordinary way
        fmt, inputs = parsed if parsed is not None else rest_json.request_tensors(doc, dtypes, signature_name)
        result = predict.run(self._registry, target, signature_name, inputs)
        return rest_json.response_json(result.outputs, fmt)


def _metadata_json(response) -> str:
    """TF Serving prints model_spec and the unpacked SignatureDefMap separately, with proto field names."""
    from odal.serving._protos import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[grpc_api.SIGNATURE_DEF_FIELD].Unpack(signatures)
    options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=1)
    spec = json_format.MessageToJson(response.model_spec, **options)
    signature_def = json_format.MessageToJson(signatures, **options)
    return '{\n"model_spec":' + spec + ',\n"metadata": {"signature_def": ' + signature_def + "}\n}\n"


class RestServer:
    """The REST API on the bounded HTTP server (``http_server``), run on its own thread; ``close()`` stops it."""

    def __init__(self, registry: Registry, host: str, port: int, limits: Limits = DEFAULT,
                 metrics_path: str | None = None):
        self._api = RestApi(registry, limits.rest_max_error_chars)
        self._metrics_path = metrics_path  # Prometheus metrics here (--monitoring_config_file), if set
        self._http = HttpServer(self._serve, host, port, limits)
        self.port = self._http.port

    def _serve(self, method: str, target: str, body: bytes) -> tuple[int, bytes, str | None]:
        path = urllib.parse.urlsplit(target).path
        if self._metrics_path is not None and path == self._metrics_path and method == "GET":
            from odal.serving import metrics
            return 200, metrics.exposition(), metrics.CONTENT_TYPE
        if not _V1.fullmatch(path):
            return 404, b"", None
        status, text = self._api.handle(method, path, body)
        return status, text.encode("utf-8"), "application/json"

    def start(self) -> None:
        self._http.start()

    def close(self) -> None:
        self._http.close()


__all__ = ["RestApi", "RestServer"]
