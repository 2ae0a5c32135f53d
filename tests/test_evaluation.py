"""The worker's traced evaluation gives the OD API's ``eager_eval_loop`` numbers, tracing its step once a session."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TINY_CONFIG

pytestmark = pytest.mark.slow

# In a child process: the OD API needs odal's compat module imported before TensorFlow.
_COMPARE = """
import json, sys
from pathlib import Path
from odal.daemon.worker import session as sessions
from odal.daemon.worker.served import evaluate_served
from object_detection import model_lib_v2
config, label_map, num_classes, round_dir, ckpt, served = sys.argv[1:]
configs = sessions.load_configs(Path(config), Path(label_map), int(num_classes), Path(round_dir) / "train.record",
                                Path(round_dir) / "eval.record")
session = sessions.ModelSession(configs)
session.restore(ckpt, None, None)
ours = session.evaluate(configs)
first_traces = session.traced_eval.traces
served_metrics = evaluate_served(session, configs, Path(served))
again = session.evaluate(configs)
dataset = session._dataset(configs, "eval")
stock = model_lib_v2.eager_eval_loop(session.model, configs, dataset, global_step=session.global_step)
stock = {name: float(value) for name, value in stock.items()}
print(json.dumps({"ours": ours, "again": again, "stock": stock, "served": served_metrics,
                  "first_traces": first_traces, "traces": session.traced_eval.traces}))
"""


@pytest.fixture(scope="module")
def compared(tiny_models):
    proc = subprocess.run([sys.executable, "-c", _COMPARE, str(TINY_CONFIG), str(tiny_models["label_map"]),
                           str(len(tiny_models["labels"])), str(tiny_models["dir"] / "round"),
                           tiny_models["checkpoints"][1], str(tiny_models["versions"][0])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_traced_evaluation_gives_the_numbers_of_the_od_apis_eval_loop(compared):
    ours, stock = compared["ours"], compared["stock"]
    assert set(ours) == set(stock) and "DetectionBoxes_Precision/mAP" in ours and "Loss/total_loss" in ours
    for name, value in stock.items():
        assert ours[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert ours["Loss/total_loss"] > 0


def test_the_eval_step_is_traced_once_for_the_candidate_and_the_served_version(compared):
    # The first call traces (twice when it is the call that creates the model's variables, as tf.function does);
    # the served version's evaluation and the next round's reuse that trace.
    assert 1 <= compared["first_traces"] <= 2 and compared["traces"] == compared["first_traces"]
    assert compared["again"] == compared["ours"]  # the served version's weights were put back
    assert compared["served"] != compared["ours"]  # ... and were really the served version's
