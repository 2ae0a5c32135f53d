"""The worker's traced evaluation gives the OD API's ``eager_eval_loop`` numbers, tracing its step once a session;
the served version's evaluation from the cache (eval_cache) gives the numbers of a full one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TINY_CONFIG

pytestmark = pytest.mark.slow

# In a child process: the OD API needs odal's compat module imported before TensorFlow.
_COMPARE = """
import json, shutil, sys
from pathlib import Path
from odal.daemon.worker import eval_cache, session as sessions
from odal.daemon.worker.served import evaluate_served, remember_export
from object_detection import model_lib_v2
config, label_map, num_classes, round_dir, ckpt, served, ckpt2, export2, scratch = sys.argv[1:]
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
traces = session.traced_eval.traces

# The served cache: round 2's candidate (checkpoint ckpt2) evaluated, then exported as export2 (a copy of it, which
# is rewritten in place below).
version2 = Path(scratch) / "2"
shutil.copytree(export2, version2)
export2 = str(version2)
session.restore(ckpt2, None, None)
outputs = eval_cache.Outputs()
candidate = session.evaluate(configs, record=outputs)
remember_export(session, Path(export2), ckpt2, outputs)
def served_eval(path, **kw):
    before = session.traced_eval.steps_run
    metrics = evaluate_served(session, configs, Path(path), **kw)
    return metrics, session.traced_eval.steps_run - before
full2, full2_steps = served_eval(export2, use_cache=False)
cached2, cached2_steps = served_eval(export2)
for key in list(session.served_cache.outputs.by_element)[:2]:  # two new eval images: not seen yet
    del session.served_cache.outputs.by_element[key]
partly2, partly2_steps = served_eval(export2)
full1, _ = served_eval(served, use_cache=False)
after = session.evaluate(configs)
# The same version folder, its weights replaced in place by round 1's (stale cache): a full evaluation, round 1's
# numbers.
stale = Path(export2)
shutil.rmtree(stale / "variables")
shutil.copytree(Path(served) / "variables", stale / "variables")
stale1, stale1_steps = served_eval(stale)

# The decoded eval elements: an evaluation of the record file just read decodes nothing again (the served one after
# the candidate's); the same path with other bytes is read again.
import tensorflow as tf
reads = [session.decoded_eval.reads]
evaluate_served(session, configs, Path(served)); reads.append(session.decoded_eval.reads)
copied = Path(scratch) / "copied"
copied.mkdir()
shutil.copy(Path(round_dir) / "eval.record", copied / "eval.record")
configs_copied = sessions.load_configs(Path(config), Path(label_map), int(num_classes), Path(round_dir) / "train.record",
                                       copied / "eval.record")
whole = session.evaluate(configs_copied); reads.append(session.decoded_eval.reads)
kept = list(tf.data.TFRecordDataset(str(copied / "eval.record")).take(2))
with tf.io.TFRecordWriter(str(copied / "eval.record")) as writer:
    for serialized in kept:
        writer.write(serialized.numpy())
shorter = session.evaluate(configs_copied); reads.append(session.decoded_eval.reads)
shorter_stock = model_lib_v2.eager_eval_loop(session.model, configs_copied, session._dataset(configs_copied, "eval"),
                                             global_step=session.global_step)
shorter_stock = {name: float(value) for name, value in shorter_stock.items()}

# The TensorBoard side-by-side images of an evaluation given ``later``: written when its calls run, not before.
def image_tags(folder):
    found = set()
    for events in Path(folder).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            found.update(v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "images")
    return sorted(found)
later = []
deferred = session.evaluate(configs, Path(scratch) / "tb", later)
images = [image_tags(Path(scratch) / "tb")]
for draw in later:
    draw()
images.append(image_tags(Path(scratch) / "tb"))
print(json.dumps({"ours": ours, "again": again, "stock": stock, "served": served_metrics,
                  "first_traces": first_traces, "traces": traces, "candidate": candidate, "full2": full2,
                  "cached2": cached2, "partly2": partly2, "full1": full1, "stale1": stale1, "after": after,
                  "steps": [full2_steps, cached2_steps, partly2_steps, stale1_steps], "eval_images": len(outputs.by_element),
                  "reads": reads, "whole": whole, "shorter": shorter, "shorter_stock": shorter_stock,
                  "deferred": deferred, "images": images}))
"""


@pytest.fixture(scope="module")
def compared(tiny_models, tmp_path_factory):
    proc = subprocess.run([sys.executable, "-c", _COMPARE, str(TINY_CONFIG), str(tiny_models["label_map"]),
                           str(len(tiny_models["labels"])), str(tiny_models["dir"] / "round"),
                           tiny_models["checkpoints"][1], str(tiny_models["versions"][0]),
                           tiny_models["checkpoints"][1], str(tiny_models["versions"][1]),
                           str(tmp_path_factory.mktemp("served_cache"))],
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


def test_the_served_evaluation_from_the_cache_gives_the_numbers_of_a_full_one(compared):
    # Round 2's candidate was evaluated and exported: the served evaluation of that export runs the model on no
    # element, or only on those not seen (two dropped here), and its numbers are those of a full evaluation.
    n = compared["eval_images"]
    assert n >= 3 and compared["steps"][:3] == [n, 0, 2]
    full = compared["full2"]
    assert "DetectionBoxes_Precision/mAP" in full and "Loss/total_loss" in full
    assert compared["cached2"] == full and compared["partly2"] == full
    assert compared["candidate"] == full  # the export's weights are the candidate's
    assert compared["after"] == compared["candidate"]  # the live weights were put back


def test_a_version_whose_weights_changed_is_evaluated_in_full_not_from_the_cache(compared):
    # The cached version's folder, its variables replaced by round 1's: every element is computed again and the
    # numbers are round 1's (a cache keyed by the folder would give round 2's).
    assert compared["steps"][3] == compared["eval_images"]
    assert compared["stale1"] == compared["full1"] != compared["full2"]


def test_the_served_evaluation_decodes_no_eval_element_again_and_a_rewritten_record_file_is_read_again(compared):
    # reads: before, after a served evaluation of the file the candidate's read, after a copy of that file (the
    # same bytes elsewhere: not read again), after that copy rewritten in place (two of its records kept).
    before = compared["reads"][0]
    assert compared["reads"][1:] == [before, before, before + 1]
    assert compared["whole"] == compared["after"]  # a copy of the same records: the same numbers
    shorter, stock = compared["shorter"], compared["shorter_stock"]
    assert shorter != compared["whole"]  # the rewritten file's elements, not the kept ones of its path
    for name, value in stock.items():
        assert shorter[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_the_side_by_side_images_are_drawn_when_the_round_asks_after_its_answer(compared):
    before, after = compared["images"]
    assert compared["deferred"] == compared["after"]
    assert before == [] and any(tag.startswith("eval_side_by_side_0") for tag in after), after
