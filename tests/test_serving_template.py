"""A model's graph loaded before its first version (serving/template.py): through a real ``odal serve``, the
``.odal-template`` folder beside the versions is loaded but never served, and version 1 of the same graph is then
loaded by reading its variables only, answering exactly as a full load of it does."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from odal.daemon.system.atomic import publish_dir
from odal.serving import discovery
from odal.serving.client import ServingClient
from odal.serving.errors import ServingError
from odal.serving.loader import Servable
from odal.serving.process import ServerProcess

OUTPUTS = ["detection_boxes", "detection_scores", "detection_classes", "raw_detection_scores"]


def _wait_for_line(log, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in {log}:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.1)


def test_version_one_reads_only_its_variables_into_the_template_loaded_before_it(tiny_models, tmp_path):
    template, version = tiny_models["versions"]  # the worker's exports: one graph, other weights
    image = np.asarray(Image.open(tiny_models["images"][0]).convert("RGB"), dtype=np.uint8)[np.newaxis]
    base = tmp_path / "models" / "m"
    base.mkdir(parents=True)
    staged = tmp_path / "staged-template"
    shutil.copytree(template, staged)
    publish_dir(staged, base / discovery.TEMPLATE_DIR)  # as the worker's prewarm publishes it
    assert discovery.list_versions(base) == {}  # not a version to TF Serving's rule
    log = tmp_path / "serve.log"
    with ServerProcess(log, "--model_name=m", f"--model_base_path={base}") as server, \
            ServingClient(server.address, timeout=60) as client:
        # What a full load of version 1 answers, computed here while the server loads the template.
        full = Servable(str(version)).run("serving_default", {"input_tensor": image}, OUTPUTS)
        _wait_for_line(log, f"{base / discovery.TEMPLATE_DIR}: template loaded", 180)
        with pytest.raises(ServingError) as none_yet:  # loaded, and still no version of the model
            client.model_status("m")
        assert none_yet.value.code == "NOT_FOUND"
        staged = tmp_path / "staged-version"
        shutil.copytree(version, staged)
        publish_dir(staged, base / "1")
        client.wait_until_available("m", 1, timeout=180)
        answer = client.predict_tensors("m", {"input_tensor": image})[0]
        statuses = client.model_status("m")
        with urllib.request.urlopen(f"{server.rest_url}/v1/models/m", timeout=30) as response:
            rest = json.loads(response.read())
    served_log = log.read_text(errors="replace")
    assert f"{base / '1'}: same graph as a loaded version; restored its variables only" in served_log
    assert all(np.allclose(answer[key], full[key], atol=1e-5, rtol=0) for key in OUTPUTS)
    assert [(s.version, s.state) for s in statuses] == [(1, "AVAILABLE")]
    assert [(s["version"], s["state"]) for s in rest["model_version_status"]] == [("1", "AVAILABLE")]
