"""Floats as TF Serving's REST API writes them: ``%g`` when that reads back to the same value, else ``%.9g``
(float32) or ``%.17g`` (float64); ``.0`` added to a bare integer; ``NaN``, ``Infinity``, ``-Infinity``.

orjson cannot write this (it writes the shortest digits that round-trip: 0.013175875 where TF Serving writes
0.0131758749, 7155 of a detector's 8227 output values differ), so the C extension ``_restparse.format_floats``
writes float32/float64 (~10x faster); this numpy version serves other float types and builds without it, and
``tests/test_serving_rest_fast.py`` checks that both give the same text.
"""

from __future__ import annotations

import numpy as np

try:
    from odal.serving import _restparse
except ImportError:  # built without a compiler: the numpy version serves
    _restparse = None


def texts(flat: np.ndarray) -> list[str]:
    """The JSON text of each value of a 1-D float array."""
    if _restparse is not None and flat.dtype in (np.float32, np.float64):
        return _restparse.format_floats(np.ascontiguousarray(flat), flat.dtype.itemsize)
    return numpy_texts(flat)


def numpy_texts(flat: np.ndarray) -> list[str]:
    """``texts`` with numpy and Python (float16 and builds without the extension)."""
    is32 = flat.dtype != np.float64
    values = flat.astype(np.float32 if is32 else np.float64)
    wide = values.astype(np.float64)
    finite = np.isfinite(wide)
    out = np.char.mod("%g", np.where(finite, wide, 0.0)).astype(object)
    back = np.where(finite, np.char.mod("%g", np.where(finite, wide, 0.0)).astype(values.dtype), values)
    redo = finite & (back != values)
    if redo.any():
        out[redo] = np.char.mod("%.9g" if is32 else "%.17g", wide[redo]).astype(object)
    result = []
    for text, ok, value in zip(out.tolist(), finite.tolist(), wide.tolist()):
        if not ok:
            result.append("NaN" if value != value else ("-Infinity" if value < 0 else "Infinity"))
        elif "." in text or "e" in text:
            result.append(text)
        else:
            result.append(text + ".0")
    return result


__all__ = ["numpy_texts", "texts"]
