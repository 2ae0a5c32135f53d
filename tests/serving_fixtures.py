"""Helpers for the hostile-client tests: a small real SavedModel shaped like the detector's input, and the
server's resident memory."""

from __future__ import annotations

from pathlib import Path


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
