"""TF Serving compatibility: the same checks, only through the public gRPC and REST APIs, against

* ``odal serve`` started here as a real subprocess on loopback (always), and
* a real ``tensorflow_model_server`` when ``ODAL_TFSERVING_ADDRESS`` (gRPC host:port) and ``ODAL_TFSERVING_REST``
  (http://host:port) point at one.  That server must see this machine's files at the same paths
  (``ODAL_TFSERVING_MODEL_ROOT``, default a pytest temp folder) and be started with
  ``--model_config_file=<any> --file_system_poll_wait_seconds=1 --max_num_load_retries=0``; the tests replace its
  model list with HandleReloadConfigRequest.

Models are real: the tiny SSD SavedModels the ``tiny_models`` fixture trains and exports with the OD API, plus a
small string-input SavedModel for binary values.  Each test adds the models it needs (ReloadConfig) under its own
names and base paths.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from odal.daemon.system.atomic import publish_dir
from odal.serving import discovery
from odal.serving.client import ServingClient
from odal.serving.errors import ServingError
from odal.serving.process import ServerProcess

POLL_SECONDS = 1
LOAD_SLACK = 90.0  # loading a tiny SSD takes ~9 s on two cores; more under load
DETECTOR = "det"


# ---- fixtures: models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image(tiny_models) -> np.ndarray:
    from PIL import Image
    with Image.open(tiny_models["images"][0]) as decoded:
        return np.asarray(decoded.convert("RGB"))


@pytest.fixture(scope="module")
def reference(tiny_models, image) -> dict[str, np.ndarray]:
    """Version 1 called in this process with tf.saved_model.load: what every server must answer."""
    import tensorflow as tf
    model = tf.saved_model.load(str(tiny_models["versions"][0]))
    outputs = model.signatures["serving_default"](input_tensor=tf.constant(image[np.newaxis]))
    return {key: value.numpy() for key, value in outputs.items()}


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory) -> Path:
    """A real SavedModel with a string input: ``image_bytes`` -> ``length`` and ``echo_bytes``."""
    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            return {"length": tf.strings.length(image_bytes), "echo_bytes": tf.identity(image_bytes)}

    module = Echo()
    folder = tmp_path_factory.mktemp("echo") / "1"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


# ---- fixtures: servers -----------------------------------------------------------------------------------

def _model_config(name: str, base_path: Path, extra: str = "") -> str:
    return f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" {extra} }}\n'


class Backend:
    """One server under test, reached only through its public APIs."""

    def __init__(self, kind: str, grpc_address: str, rest_url: str, models_root: Path):
        self.kind, self.rest_url, self.models_root = kind, rest_url.rstrip("/"), models_root
        self.client = ServingClient(grpc_address, timeout=60.0)
        self.models: dict[str, str] = {}

    def base_path(self, name: str, *versions: Path) -> Path:
        base = self.models_root / name
        base.mkdir(parents=True)
        for number, source in enumerate(versions, start=1):
            shutil.copytree(source, base / str(number))
        return base

    def set_models(self, **configs: str) -> None:
        """Replace the server's model list (HandleReloadConfigRequest); waits for the new models to load."""
        self.models = {name: text for name, text in {**self.models, **configs}.items() if text}
        self.client.reload_config("model_config_list {\n" + "".join(self.models.values()) + "}",
                                  timeout=LOAD_SLACK * 2)

    def rest(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.rest_url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module", params=["odal", "tfserving"])
def backend(request, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"serving-{request.param}")
    if request.param == "tfserving":
        address, rest = os.environ.get("ODAL_TFSERVING_ADDRESS"), os.environ.get("ODAL_TFSERVING_REST")
        if not (address and rest):
            pytest.skip("no real TF Serving: set ODAL_TFSERVING_ADDRESS=host:port (gRPC) and "
                        "ODAL_TFSERVING_REST=http://host:port to run these checks against tensorflow_model_server")
        models_root = Path(os.environ.get("ODAL_TFSERVING_MODEL_ROOT") or root)
        server = Backend("tfserving", address, rest, models_root)
        server.models = {}
        server.set_models(**{DETECTOR: _model_config(DETECTOR, server.base_path(DETECTOR, tiny_models["versions"][0]))})
        try:
            yield server
        finally:
            server.client.close()
        return
    models_root = root / "models"
    detector_base = models_root / DETECTOR
    detector_base.mkdir(parents=True)
    shutil.copytree(tiny_models["versions"][0], detector_base / "1")
    config = _model_config(DETECTOR, detector_base)
    (root / "models.config").write_text("model_config_list {\n" + config + "}\n")
    with ServerProcess(root / "serve.log", f"--model_config_file={root / 'models.config'}",
                       f"--file_system_poll_wait_seconds={POLL_SECONDS}", "--max_num_load_retries=0") as odal:
        server = Backend("odal", odal.address, odal.rest_url, models_root)
        try:
            server.models = {DETECTOR: config}
            server.client.wait_until_available(DETECTOR, 1, timeout=LOAD_SLACK + 60)
            yield server
        finally:
            server.client.close()


def _publish(base: Path, number: int, source: Path, break_it: bool = False) -> None:
    """Publish a version the way odal does: a complete folder renamed into place in one step."""
    staging = base / f".staging-{number}"
    shutil.copytree(source, staging)
    if break_it:
        (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    publish_dir(staging, base / str(number))


def _states(backend: Backend, name: str) -> dict[int, str]:
    return {s.version: s.state for s in backend.client.model_status(name)}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# ---- predict ---------------------------------------------------------------------------------------------

def test_grpc_predict_matches_an_in_process_call_of_the_same_savedmodel(backend, image, reference):
    outputs, version = backend.client.predict_tensors(DETECTOR, {"input_tensor": image[np.newaxis]})
    assert version == 1 and set(outputs) == set(reference)
    for key, expected in reference.items():
        np.testing.assert_allclose(outputs[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)


def test_client_detections_are_the_models_top_boxes_classes_and_scores(backend, image, reference, tiny_models):
    found = backend.client.predict(DETECTOR, image)
    num = int(reference["num_detections"][0])
    assert found.num == num and found.model_version == 1
    np.testing.assert_allclose(found.boxes, reference["detection_boxes"][0, :num], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found.scores, reference["detection_scores"][0, :num], rtol=1e-5, atol=1e-6)
    assert found.classes.tolist() == reference["detection_classes"][0, :num].astype(int).tolist()
    encoded = backend.client.predict(DETECTOR, tiny_models["images"][0])  # a path: decoded to pixels
    np.testing.assert_allclose(encoded.scores, found.scores, rtol=1e-5, atol=1e-6)
    many = backend.client.predict_many(DETECTOR, [image] * 6, concurrency=3, version=1)
    assert [m.model_version for m in many] == [1] * 6
    for result in many:
        np.testing.assert_allclose(result.scores, found.scores, rtol=1e-5, atol=1e-6)


def test_rest_predict_row_and_columnar_formats_match_the_in_process_call(backend, image, reference):
    status, row = backend.rest("POST", f"/v1/models/{DETECTOR}:predict", {"instances": image[np.newaxis].tolist()})
    assert status == 200 and len(row["predictions"]) == 1
    status, columnar = backend.rest("POST", f"/v1/models/{DETECTOR}/versions/1:predict",
                                    {"signature_name": "serving_default",
                                     "inputs": {"input_tensor": image[np.newaxis].tolist()}})
    assert status == 200
    for key, expected in reference.items():
        np.testing.assert_allclose(np.array(row["predictions"][0][key]), expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(columnar["outputs"][key]), expected, rtol=1e-5, atol=1e-6)


def test_binary_values_travel_as_b64_over_rest_and_as_strings_over_grpc(backend, echo_model):
    backend.set_models(echo=_model_config("echo", backend.base_path("echo", echo_model)))
    try:
        blob = b"\x00\xff\xd8binary\x00"
        encoded = base64.b64encode(blob).decode()
        status, row = backend.rest("POST", "/v1/models/echo:predict", {"instances": [{"b64": encoded}]})
        assert status == 200 and row == {"predictions": [{"echo_bytes": {"b64": encoded}, "length": len(blob)}]}
        status, columnar = backend.rest("POST", "/v1/models/echo:predict", {"inputs": [{"b64": encoded}, "ab"]})
        assert status == 200
        assert columnar == {"outputs": {"echo_bytes": [{"b64": encoded}, {"b64": "YWI="}], "length": [len(blob), 2]}}
        outputs, _ = backend.client.predict_tensors("echo", {"image_bytes": np.array([blob], dtype=object)})
        assert outputs["echo_bytes"].tolist() == [blob] and outputs["length"].tolist() == [len(blob)]
    finally:
        backend.set_models(echo="")


# ---- status and metadata ---------------------------------------------------------------------------------

def test_rest_status_has_tf_servings_json_shape(backend):
    status, body = backend.rest("GET", f"/v1/models/{DETECTOR}")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, one = backend.rest("GET", f"/v1/models/{DETECTOR}/versions/1")
    assert status == 200 and one == body


def test_rest_metadata_has_tf_servings_json_shape(backend):
    status, body = backend.rest("GET", f"/v1/models/{DETECTOR}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": DETECTOR, "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    tensor = signature["inputs"]["input_tensor"]
    assert tensor["dtype"] == "DT_UINT8"
    assert [d["size"] for d in tensor["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert {"detection_boxes", "detection_scores", "detection_classes", "num_detections"} <= set(signature["outputs"])


def test_grpc_metadata_names_the_signature_inputs(backend):
    signature = backend.client.signature(DETECTOR)
    assert signature.model_version == 1
    assert signature.inputs == {"input_tensor": (4, (-1, -1, -1, 3))}  # 4 = DT_UINT8; batch free


# ---- errors ----------------------------------------------------------------------------------------------

def test_unknown_models_versions_and_labels_get_tf_servings_errors(backend, image):
    pixels = {"input_tensor": image[np.newaxis]}
    cases = [
        (lambda: backend.client.predict_tensors("nope", pixels), "NOT_FOUND",
         "Servable not found for request: Latest(nope)"),
        (lambda: backend.client.predict_tensors(DETECTOR, pixels, version=42), "NOT_FOUND",
         f"Servable not found for request: Specific({DETECTOR}, 42)"),
        (lambda: backend.client.predict_tensors(DETECTOR, pixels, label="nope"), "INVALID_ARGUMENT",
         "Unrecognized servable version label: nope"),
        (lambda: backend.client.model_status("nope"), "NOT_FOUND", "Could not find any versions of model nope"),
        (lambda: backend.client.model_status(DETECTOR, 42), "NOT_FOUND", f"Could not find version 42 of model {DETECTOR}"),
        (lambda: backend.client.predict_tensors(DETECTOR, pixels, signature="nope"), "FAILED_PRECONDITION",
         'Serving signature key "nope" not found.'),
        (lambda: backend.client.predict_tensors(DETECTOR, {**pixels, "x": image[np.newaxis]}), "INVALID_ARGUMENT",
         "input size does not match signature"),
    ]
    for call, code, message in cases:
        with pytest.raises(ServingError) as raised:
            call()
        assert raised.value.code == code and message in raised.value.message


def test_rest_errors_are_an_error_object_with_the_mapped_http_status(backend, image):
    assert backend.rest("GET", "/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    assert backend.rest("POST", "/v1/models/nope:predict", {"instances": [1]}) == (
        404, {"error": "Servable not found for request: Latest(nope)"})
    status, body = backend.rest("POST", f"/v1/models/{DETECTOR}/versions/42:predict", {"instances": [1]})
    assert status == 404 and body == {"error": f"Servable not found for request: Specific({DETECTOR}, 42)"}
    status, body = backend.rest("POST", f"/v1/models/{DETECTOR}:predict", b"{not json")
    assert status == 400 and body["error"].startswith("JSON Parse error")
    status, body = backend.rest("GET", f"/v1/models/{DETECTOR}/nonsense/path")
    assert status == 400 and body == {"error": f"Malformed request: GET /v1/models/{DETECTOR}/nonsense/path"}
    status, body = backend.rest("POST", f"/v1/models/{DETECTOR}:predict", {"instances": [[[[1.5, 2, 3]]]]})
    assert status == 400 and "is not of expected type: uint8" in body["error"]


def test_version_labels_route_requests_and_must_name_a_loaded_version(backend, image):
    labelled = _model_config(DETECTOR, backend.models_root / DETECTOR, 'version_labels { key: "stable" value: 1 }')
    backend.set_models(**{DETECTOR: labelled})
    try:
        outputs, version = backend.client.predict_tensors(DETECTOR, {"input_tensor": image[np.newaxis]},
                                                          label="stable")
        assert version == 1
        status, body = backend.rest("POST", f"/v1/models/{DETECTOR}/labels/stable:predict",
                                    {"instances": image[np.newaxis].tolist()})
        assert status == 200 and "predictions" in body
        with pytest.raises(ServingError) as raised:
            backend.set_models(**{DETECTOR: _model_config(DETECTOR, backend.models_root / DETECTOR,
                                                          'version_labels { key: "next" value: 9 }')})
        assert raised.value.code == "FAILED_PRECONDITION"
        assert "Request to assign label to version 9 of model det" in raised.value.message
    finally:
        backend.set_models(**{DETECTOR: _model_config(DETECTOR, backend.models_root / DETECTOR)})


# ---- versions --------------------------------------------------------------------------------------------

def test_published_version_loads_within_the_poll_interval_and_then_replaces_the_old(backend, tiny_models, image):
    base = backend.base_path("rolling", tiny_models["versions"][0])
    backend.set_models(rolling=_model_config("rolling", base))
    answers, failures, stop = [], [], threading.Event()

    def keep_asking() -> None:  # availability: every request during the transition must be answered
        with ServingClient(backend.client.address, timeout=60.0) as client:
            while not stop.is_set():
                try:
                    answers.append(client.predict("rolling", image).model_version)
                except ServingError as exc:
                    failures.append(exc)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        (base / ".staging-3").mkdir()  # an incomplete folder that is not a version
        published = time.monotonic()
        _publish(base, 2, tiny_models["versions"][1])
        _wait_for(lambda: _states(backend, "rolling").get(2) == "AVAILABLE", POLL_SECONDS + LOAD_SLACK,
                  "version 2 to become AVAILABLE")
        took = time.monotonic() - published
        _wait_for(lambda: _states(backend, "rolling").get(1) == "END", 30, "version 1 to be unloaded")
        _wait_for(lambda: len(answers) and answers[-1] == 2, 30, "answers from version 2")
    finally:
        stop.set()
        asker.join(60)
    assert took < POLL_SECONDS + LOAD_SLACK
    assert failures == []
    assert answers == sorted(answers) and set(answers) == {1, 2}
    assert _states(backend, "rolling") == {2: "AVAILABLE", 1: "END"}
    with pytest.raises(ServingError) as raised:
        backend.client.predict("rolling", image, version=1)
    assert raised.value.code == "NOT_FOUND"
    backend.set_models(rolling="")


def test_broken_version_ends_with_its_error_while_the_previous_keeps_answering(backend, tiny_models, image):
    base = backend.base_path("broken", tiny_models["versions"][0])
    backend.set_models(broken=_model_config("broken", base))
    _publish(base, 2, tiny_models["versions"][1], break_it=True)
    status = _wait_for(lambda: [s for s in backend.client.model_status("broken") if s.version == 2
                                and s.state == "END"], POLL_SECONDS + LOAD_SLACK, "version 2 to fail")[0]
    assert status.error_code != "OK" and status.error_message
    assert backend.client.predict("broken", image).model_version == 1
    status_code, body = backend.rest("GET", "/v1/models/broken/versions/2")
    assert status_code == 200
    (entry,) = body["model_version_status"]
    assert entry["state"] == "END" and entry["status"]["error_code"] not in ("OK", 0)
    assert _states(backend, "broken")[1] == "AVAILABLE"
    backend.set_models(broken="")


def test_reload_config_adds_and_removes_models(backend, tiny_models, image, echo_model):
    backend.set_models(added=_model_config("added", backend.base_path("added", echo_model)))
    assert _states(backend, "added") == {1: "AVAILABLE"}  # the reload answered once the new model was loaded
    backend.set_models(added="")
    _wait_for(lambda: _states(backend, "added") == {1: "END"}, 30, "the removed model to be unloaded")
    with pytest.raises(ServingError) as raised:
        backend.client.predict_tensors("added", {"image_bytes": np.array([b"x"], dtype=object)})
    assert raised.value.code == "NOT_FOUND"
    assert backend.client.predict(DETECTOR, image).model_version == 1  # the others stay


def test_reload_config_rejects_an_invalid_model_list(backend):
    with pytest.raises(ServingError) as raised:
        backend.client.reload_config('model_config_list { config { name: "x" base_path: "relative" '
                                     'model_platform: "tensorflow" } }')
    assert raised.value.code == "INVALID_ARGUMENT"
    assert _states(backend, DETECTOR)[1] == "AVAILABLE"


def test_config_text_is_tf_servings_own_format(backend):
    """The config the tests send is parsed by TF Serving's protos unchanged (sanity check of the harness)."""
    config = discovery.parse_config_text("model_config_list {\n" + "".join(backend.models.values()) + "}")
    assert [source.name for source in discovery.sources(config)] == list(backend.models)


# ---- the embedding odal's exports add ----------------------------------------------------------------------

def test_odal_exports_answer_an_image_embedding_over_grpc_rest_and_the_client(backend, image, reference):
    """Every odal export's signature has ``image_embedding`` [1, D] beside the standard OD API outputs (unchanged);
    gRPC (asked for alone), REST and ``ServingClient.predict`` return the SavedModel's own vector.  (The 20-step
    tiny SSD gives every image the same vector; that embeddings tell images apart is checked with a real model in
    test_active_queue.py and measured on the pretrained SSDLite in bench/results/rescoring.md.)"""
    standard = {"detection_boxes", "detection_classes", "detection_scores", "num_detections"}
    assert standard < set(reference) and reference["image_embedding"].shape == (1, 44)  # the tiny SSD's last map
    outputs, _version = backend.client.predict_tensors(DETECTOR, {"input_tensor": image[np.newaxis]},
                                                       output_filter=["image_embedding"])
    assert set(outputs) == {"image_embedding"}
    np.testing.assert_allclose(outputs["image_embedding"], reference["image_embedding"], rtol=1e-5, atol=1e-6)
    status, row = backend.rest("POST", f"/v1/models/{DETECTOR}:predict", {"instances": image[np.newaxis].tolist()})
    assert status == 200
    np.testing.assert_allclose(row["predictions"][0]["image_embedding"], reference["image_embedding"][0],
                               rtol=1e-5, atol=1e-6)
    found = backend.client.predict(DETECTOR, image)
    assert found.embedding.shape == (44,) and np.any(found.embedding != 0)
    np.testing.assert_allclose(found.embedding, reference["image_embedding"][0], rtol=1e-5, atol=1e-6)
