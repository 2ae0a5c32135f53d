"""The round stage contracts: every typed message survives its JSON line unchanged, any other line is refused as a
ProtocolError (never another exception), and the worker client never takes one round's answer for another's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odal.daemon.rounds.contracts import (FineTune, GateSpec, JobFailed, Progress, ProtocolError, Ready, RoundJob,
                                          RoundResult, Served, decode, encode)
from odal.daemon.rounds.worker_client import Worker

_text = st.text(max_size=30)
_paths = st.builds(Path, st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=1,
                                 max_size=20).map(lambda name: "/" + name))
_numbers = st.floats(allow_nan=False, allow_infinity=False)
_flat = st.dictionaries(_text, st.one_of(st.integers(-(2 ** 53), 2 ** 53), _numbers, _text, st.none()), max_size=4)
_jobs = st.builds(
    RoundJob, round_id=st.integers(1, 2 ** 53), round_dir=_paths, pipeline_config=_paths, label_map=_paths,
    num_classes=st.integers(1, 1000), steps=st.integers(0, 10 ** 6), checkpoint_dir=_paths, export_dir=_paths,
    init_checkpoint=st.none() | _text, fine_tune=st.none() | st.builds(FineTune, _text, _text),
    tensorboard_dir=st.none() | _paths, gate=st.none() | st.builds(GateSpec, _text, _numbers),
    served=st.none() | st.builds(Served, st.integers(1, 10 ** 6), _paths),
)
_answers = st.one_of(
    st.builds(Ready, st.integers(1, 2 ** 31)),
    st.builds(Progress, st.integers(1, 2 ** 53), _text, st.none() | st.integers(0, 10 ** 6),
              st.none() | st.integers(0, 10 ** 6), st.none() | _numbers),
    st.builds(RoundResult, round_id=st.integers(1, 2 ** 53), counts=st.dictionaries(_text, st.integers(0, 99)),
              train=_flat, session_reused=st.booleans(), export=st.none() | _text, adjusted=st.lists(_text),
              checkpoint=_text, metrics=st.none() | st.dictionaries(_text, _numbers), served_metrics=st.none(),
              gate=st.none() | _flat, timings=st.dictionaries(_text, _numbers)),
    st.builds(JobFailed, st.none() | st.integers(1, 2 ** 53), _text),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_jobs, _answers))
def test_every_message_survives_its_json_line_unchanged(message):
    line = encode(message)
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert decode(line) == message


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.dictionaries(_text, st.one_of(_text, st.integers(), st.none()), max_size=5).map(
                     lambda fields: encode(Ready(1))[:-2] + "".join(f', "{k!s:.5}": "{v!s:.5}"' for k, v in
                                                                     fields.items()) + "}"),
                 st.sampled_from(['{"type": "job"}', '{"type": "result", "round_id": 1}', '[1]', '"job"', "null",
                                  '{"type": "progress", "round_id": 1, "stage": "x", "extra": 1}'])))
def test_a_line_that_is_not_a_message_is_refused_as_a_protocol_error_and_nothing_else(line):
    try:
        message = decode(line)
    except ProtocolError:
        return
    assert isinstance(message, (RoundJob, Ready, Progress, RoundResult, JobFailed))


@pytest.mark.timeout(300)
def test_a_child_whose_relay_failed_mid_round_is_discarded_so_its_later_answers_never_reach_the_next_round(tmp_path):
    """A progress relay that raises (e.g. a status write on a full disk) leaves the child answering round 1: it
    must be gone, so the next round starts a fresh child instead of reading round 1's answers as its own."""
    folder = tmp_path / "round-1"  # no annotations.jsonl: the job would fail right after its first stage
    folder.mkdir()
    job = RoundJob(round_id=1, round_dir=folder, pipeline_config=tmp_path / "none.config",
                   label_map=tmp_path / "none.pbtxt", num_classes=1, steps=1, checkpoint_dir=tmp_path / "ckpt",
                   export_dir=tmp_path / "export")

    def failing_relay(progress: Progress) -> None:
        raise OSError(28, "No space left on device")

    worker = Worker(tmp_path / "worker.log")
    try:
        with pytest.raises(OSError):
            worker.run(job, failing_relay)
        assert worker.pid is None  # the next run() starts a new child
    finally:
        worker.stop()
