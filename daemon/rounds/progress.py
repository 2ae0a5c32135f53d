"""A round's progress from the worker's ``progress`` messages: the status text, a structured record for
``odal status --watch`` (stage, step/total, loss, steps/s, ETA) and, every ``log_every`` steps, an info log line.

The worker reports every 10 training steps; a line at info level every tenth of the round (at least every 10
steps) says the round moves without flooding the journal.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from odal.daemon.rounds.contracts import Progress


class RoundProgress:
    def __init__(self, round_id: int, total_steps: int, log, status: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic):
        self.round_id = round_id
        self.log = log
        self.status = status
        self.clock = clock
        self.log_every = max(10, math.ceil(total_steps / 10 / 10) * 10)
        self._started: tuple[float, int] | None = None  # (time, step) of the first training report
        self._logged = 0

    def __call__(self, message: Progress) -> None:
        if message.step is None:
            self.status(f"round {self.round_id}: {message.stage}", {"round": self.round_id, "stage": message.stage})
            self.log.info("stage_started", stage=message.stage)
            return
        step, total, loss = int(message.step), int(message.of), float(message.loss)
        now = self.clock()
        if self._started is None:
            self._started = (now, step)
        rate = None
        if step > self._started[1] and now > self._started[0]:
            rate = (step - self._started[1]) / (now - self._started[0])
        eta = (total - step) / rate if rate else None
        detail = {"round": self.round_id, "stage": "train", "step": step, "of": total,
                  "loss": _round(loss, 4), "steps_per_second": _round(rate, 2), "eta_seconds": _round(eta, 0)}
        self.status(f"round {self.round_id}: training {step}/{total}", detail)
        if step // self.log_every > self._logged // self.log_every or step == total:
            self._logged = step
            timing = {k: detail[k] for k in ("steps_per_second", "eta_seconds") if detail[k] is not None}
            self.log.info("train_progress", step=step, of=total, loss=detail["loss"], **timing)
        else:
            self.log.debug("train_progress", step=step, of=total, loss=detail["loss"])


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits else float(round(value))
