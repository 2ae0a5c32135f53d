"""The round worker: a child process that imports TensorFlow once and runs round jobs sent by the daemon.

Protocol (one JSON object per line): the daemon writes a job to stdin; the worker answers on its protocol stream
(the original stdout; anything else printed goes to stderr) with ``progress`` lines and one ``result`` line per
job.  It exits at end of input.  Every output of a job goes where the job says; a failed job leaves no partial
output behind (files are written aside and renamed).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from odal.daemon.worker.prewarm import prewarm
from odal.daemon.worker.rounds import run_job


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints (pycocotools prints its tables) must not corrupt the protocol
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")

    send({"type": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        if job.get("type") == "prewarm":  # build and trace the model before the first round needs it
            try:
                send({"type": "prewarmed", "ok": True, **prewarm(job)})
            except Exception as error:  # noqa: BLE001 - the round builds its session itself then
                traceback.print_exc()
                send({"type": "prewarmed", "ok": False, "error": f"{type(error).__name__}: {error}"})
            continue
        try:
            result = run_job(job, send)
            send({"type": "result", "ok": True, **result})
        except Exception as error:  # noqa: BLE001 - reported to the daemon, which records the failed round
            traceback.print_exc()
            send({"type": "result", "ok": False, "error": f"{type(error).__name__}: {error}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
