"""How uncertain the model is about one image (numpy only: no TensorFlow, no Prodigy, no I/O).

Shared by the recipe (order of tasks) and the daemon's active-learning queue (order of images), so both rank
images the same way.

**Uncertainty** of an image: ``max(1 - |2*s - 1|)`` over its detections whose score ``s`` is at least
:data:`SCORE_FLOOR` (0 when there is none).  A detection at 0.5 is a coin toss (1.0), one at 0.05 or 0.99 is
settled (near 0); taking the least confident detection rather than the mean keeps one ambiguous box from being
hidden by many confident ones, and that ambiguous box is exactly what an annotator's correction teaches the model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SCORE_FLOOR = 0.05  # below this a detection is background noise, not a question worth asking


def uncertainty(scores: Sequence[float] | np.ndarray, floor: float = SCORE_FLOOR) -> float:
    """The uncertainty of an image whose detections scored ``scores`` (see the module docstring), in [0, 1]."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    values = values[values >= floor]
    if values.size == 0:
        return 0.0
    return float(np.max(1.0 - np.abs(2.0 * np.clip(values, 0.0, 1.0) - 1.0)))
