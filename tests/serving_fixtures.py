"""Shared by the hostile-client and fuzzing tests: a small real SavedModel shaped like the detector's input, one
``odal serve`` process serving it (session-wide, short timeouts), and the server's resident memory.  Test modules
import the fixtures by name."""

from __future__ import annotations

from pathlib import Path

import pytest

REQUEST_TIMEOUT = 3.0  # --rest_api_timeout_in_ms of the shared server (default 30 s)
IDLE_TIMEOUT = 2.0  # --rest_api_idle_timeout_seconds (default 30 s)
BODY_LIMIT = 8 << 20  # --rest_api_max_body_bytes (default 64 MiB)
INFLIGHT_LIMIT = 16 << 20  # --rest_api_max_inflight_bytes (default 512 MiB)


def save_small_model(folder: Path, filler_floats: int = 0) -> Path:
    """A real SavedModel taking ``input_tensor`` uint8 [1,-1,-1,3] (the OD API export's input) and answering the
    image's per-channel ``mean``; ``filler_floats`` adds a constant of that many floats to its graph (makes a
    failed load allocate that much)."""
    import numpy as np
    import tensorflow as tf

    class Small(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            mean = tf.reduce_mean(tf.cast(input_tensor, tf.float32), axis=[1, 2])
            if filler_floats:
                mean += 0.0 * tf.reduce_sum(tf.constant(np.zeros(filler_floats, np.float32)))
            return {"mean": mean + self.bias}

    module = Small()
    module.bias = tf.Variable(0.0)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def rss_mib(pid: int) -> float:
    """Resident memory of a process now, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process so far (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


@pytest.fixture(scope="session")
def small_model_base(tmp_path_factory) -> Path:
    """A model base path holding version 1 of ``save_small_model``."""
    base = tmp_path_factory.mktemp("small-model") / "m"
    base.mkdir()
    save_small_model(base / "1")
    return base


@pytest.fixture(scope="session")
def small_server(small_model_base, tmp_path_factory):
    """``odal serve`` on loopback serving ``small_model_base`` as model ``m``; checked to be up at the end."""
    from odal.serving.client import ServingClient
    from odal.serving.process import ServerProcess

    log = tmp_path_factory.mktemp("small-server") / "serve.log"
    with ServerProcess(log, "--model_name=m", f"--model_base_path={small_model_base}",
                       f"--rest_api_timeout_in_ms={int(REQUEST_TIMEOUT * 1000)}",
                       f"--rest_api_idle_timeout_seconds={IDLE_TIMEOUT}",
                       f"--rest_api_max_body_bytes={BODY_LIMIT}",
                       f"--rest_api_max_inflight_bytes={INFLIGHT_LIMIT}") as process:
        with ServingClient(process.address, timeout=60) as client:
            client.wait_until_available("m", timeout=180)
        yield process
        print(f"\nserver peak RSS through the hostile and fuzzing cases: {peak_rss_mib(process.process.pid):.0f} MiB")
        assert process.process.poll() is None, "the server exited"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
