"""Prodigy ``image_manual`` rect spans, as the recipe pre-fills them and ``prodigy db-out`` prints them."""

from __future__ import annotations


def rect_span(label: str, x0: float, y0: float, x1: float, y1: float, score: float | None = None) -> dict:
    """A rect span in pixels; points run top-left, bottom-left, bottom-right, top-right."""
    span = {"label": label, "type": "rect", "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0,
            "center": [(x0 + x1) / 2, (y0 + y1) / 2], "points": [[x0, y0], [x0, y1], [x1, y1], [x1, y0]]}
    if score is not None:
        span["score"] = round(score, 4)
    return span
