"""The round worker: a child process that imports TensorFlow once and runs round jobs sent by the daemon.

Protocol (odal.daemon.rounds.contracts, one JSON object per line): the client writes a job to stdin; the worker
answers on its protocol stream (the original stdout; anything else printed goes to stderr) with ``progress`` lines
and one ``result`` (or ``failed``) line per job, each echoing the job's round id.  It exits at end of input.
Every output of a job goes where the job says; a failed job leaves no partial output behind (files are written
aside and renamed).
"""

from __future__ import annotations

import os
import sys
import traceback

from odal.daemon.rounds.contracts import (JobFailed, Prewarmed, PrewarmJob, Ready, RoundJob, decode, encode,
                                          round_id_of)
from odal.daemon.worker.prewarm import prewarm
from odal.daemon.worker.rounds import after_reply, run_job


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints (pycocotools prints its tables) must not corrupt the protocol
    sys.stdout = sys.stderr

    def send(message) -> None:
        protocol.write(encode(message))

    send(Ready(os.getpid()))
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = decode(line)
            if isinstance(job, PrewarmJob):  # build and trace the model before the first round needs it
                send(_prewarm(job))
                continue
            if not isinstance(job, RoundJob):
                raise TypeError(f"expected a job, got {type(job).__name__}")
            send(run_job(job, send))
            after_reply()  # TensorBoard images: after the answer, off the round's critical path
        except Exception as error:  # noqa: BLE001 - reported to the daemon, which records the failed round
            traceback.print_exc()
            send(JobFailed(round_id_of(line), f"{type(error).__name__}: {error}"))
    return 0


def _prewarm(job: PrewarmJob) -> Prewarmed:
    try:
        return Prewarmed(ok=True, **prewarm(job))
    except Exception as error:  # noqa: BLE001 - the round builds its session itself then
        traceback.print_exc()
        return Prewarmed(ok=False, error=f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    sys.exit(main())
