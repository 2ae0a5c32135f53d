"""A short, bounded JSON preview of a client's value, for error messages (never echoes a whole input)."""

from __future__ import annotations

import json
from typing import Any

PREVIEW_CHARS = 200


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """Compact JSON of ``value``, cut after about ``limit`` characters: messages name the value without echoing
    a whole (possibly huge or deeply nested) input.  Never builds more than ``limit`` characters."""
    parts: list[str] = []
    left = [limit]

    def emit(text: str) -> None:
        parts.append(text[:max(left[0], 0)])
        left[0] -= len(text)

    def walk(item: Any, depth: int) -> None:
        if left[0] <= 0:
            return
        if depth > 16 and isinstance(item, (list, dict)):
            emit("...")
        elif isinstance(item, list):
            emit("[")
            for index, element in enumerate(item):
                if left[0] <= 0:
                    break
                emit("," if index else "")
                walk(element, depth + 1)
            emit("]")
        elif isinstance(item, dict):
            emit("{")
            for index, (key, element) in enumerate(item.items()):
                if left[0] <= 0:
                    break
                emit(("," if index else "") + json.dumps(str(key)[:limit]) + ":")
                walk(element, depth + 1)
            emit("}")
        elif isinstance(item, str):
            emit(json.dumps(item[:limit]))
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 4 * limit:
            emit(f"<integer of {item.bit_length()} bits>")
        else:
            emit(json.dumps(item))

    walk(value, 0)
    text = "".join(parts)
    return text if left[0] >= 0 else text + "..."
