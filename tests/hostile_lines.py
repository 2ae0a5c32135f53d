"""Hypothesis strategies for hostile Prodigy export lines, and the batches the ingest fuzz tests feed to odal.

A batch is a list of :class:`Line` values: known-good records (each with its own ``_input_hash``), lines that are
bad whatever else happens (``kind`` "bad": the ingest must set them aside), and hostile records that may or may not
be usable (``kind`` "maybe": wrong types or odd values in fields that are allowed to be anything).  Nothing here
knows odal's parser: the classes come from how each line was built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from hypothesis import strategies as st

from odal.daemon.sources import datasets

LABELS = list(datasets.SHAPE_LABELS)
GOOD_HASH_BASE = 7_000_000_000  # good lines: GOOD_HASH_BASE + n; hostile records: HOSTILE_HASH_BASE + n
HOSTILE_HASH_BASE = 8_000_000_000


@dataclass(frozen=True)
class Line:
    raw: bytes  # without the newline
    kind: str  # "good", "bad" or "maybe"
    input_hash: str | None = None  # for "good" and "maybe"


# ------------------------------------------------------------------------------------------------ values

huge_ints = st.one_of(st.integers(min_value=10 ** 20, max_value=10 ** 4000), st.integers(max_value=-(10 ** 20)))
past_float = st.integers(min_value=10 ** 310, max_value=10 ** 4000)  # an int no float can hold
odd_floats = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 5e-324, 0.3, -0.0])
odd_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zs", "Lo", "Mn", "So"]), max_size=40),  # lone surrogates
    st.sampled_from(["\x00", "\ud800", "\udcff.jpg", "../" * 30 + "etc/passwd", "a" * 5000, "\u202e.jpg",
                     "data:image/png;base64,", "data:image/png;base64,@@", "file:///etc/passwd", "𝔘𝔫𝔦.jpg"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_ints, st.floats(), odd_floats, odd_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(odd_text, inner, max_size=5)),
                           max_leaves=20)


def dumps(value) -> bytes:
    """JSON as Python writes it (NaN and Infinity literals included), lone surrogates escaped as ``\\udXXX``."""
    return json.dumps(value).encode("utf-8")


# ----------------------------------------------------------------------------------------------- records


def good_record(items, index: int, n: int, answer: str) -> dict:
    item = items[index % len(items)]
    record = datasets.prodigy_record(item, item.image.name, answer, timestamp=1000 + n)
    record["_input_hash"] = GOOD_HASH_BASE + n
    return record


@st.composite
def bad_records(draw, items, n: int) -> bytes:
    """A record with one field that can never be valid (every other field good)."""
    record = good_record(items, n, n, "accept")
    record["_input_hash"] = HOSTILE_HASH_BASE + n
    field = draw(st.sampled_from(["_input_hash", "answer", "width", "height", "span", "spans", "image",
                                  "_timestamp", "points"]))
    if field == "_input_hash":
        record[field] = draw(st.one_of(huge_ints, st.text(alphabet="0123456789", min_size=21, max_size=5000),
                                       st.floats(), st.lists(st.integers(), max_size=2), st.booleans(),
                                       odd_text.filter(lambda t: not t.strip().lstrip("-").isdigit())))
    elif field == "answer":
        record[field] = draw(json_values.filter(lambda v: not (isinstance(v, str) and v in
                                                                ("accept", "reject", "ignore"))))
    elif field in ("width", "height"):
        record[field] = draw(st.one_of(huge_ints, st.sampled_from([0, -1, 1e300, float("nan"), float("inf"),
                                                                   10 ** 7, -0.0]),
                                       st.text(max_size=5), st.lists(st.integers(), max_size=2), st.booleans()))
    elif field == "span":  # one bad span among good ones
        spans = record["spans"]
        bad = draw(st.one_of(json_values.filter(lambda v: not isinstance(v, dict)),
                             st.fixed_dictionaries({"label": odd_text.filter(lambda t: t not in LABELS),
                                                    "points": st.just([[1, 1], [50, 50]])})))
        spans.insert(draw(st.integers(0, len(spans))), bad)
    elif field == "spans":
        record[field] = draw(json_values.filter(lambda v: v is not None and not isinstance(v, list)))
    elif field == "image":
        for key in ("image", "path", "meta"):
            record.pop(key)
        record["image"] = draw(json_values.filter(lambda v: v is not None and not isinstance(v, str)))
    elif field == "_timestamp":
        record[field] = draw(st.one_of(past_float, odd_text,
                                       st.sampled_from([float("nan"), float("inf"), True]),
                                       st.lists(st.integers(), max_size=2)))
    else:  # points: a span whose points are not pairs of finite numbers
        bad_point = draw(st.one_of(st.just([float("nan"), 1]), st.just([1, float("inf")]),
                                   past_float.map(lambda v: [v, 1]),
                                   st.lists(scalars, max_size=4).filter(
                                       lambda p: len(p) != 2 or not all(isinstance(v, (int, float)) and not
                                                                        isinstance(v, bool) and _finite(v)
                                                                        for v in p))))
        record["spans"][0] = dict(record["spans"][0], points=[bad_point, [5, 5]])
    return dumps(record)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@st.composite
def maybe_records(draw, items, n: int) -> bytes:
    """A record with hostile values in fields odal may ignore or accept (never ``_input_hash``)."""
    record = good_record(items, n, n, draw(st.sampled_from(["accept", "reject", "ignore"])))
    record["_input_hash"] = HOSTILE_HASH_BASE + n
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["_task_hash", "_timestamp", "meta", "text", "_session_id", "_annotator_id",
                                    "width", "height", "image", "path", "spans", "extra", "_view_id"]))
        record[key] = draw(json_values)
    if draw(st.booleans()):  # a huge list of good spans, with hostile extra keys
        span = {"label": LABELS[0], "points": [[1, 1], [40, 40]], "junk": draw(scalars)}
        record["spans"] = [span] * draw(st.sampled_from([50, 500]))
    return dumps(record)


raw_bad_lines = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)).map(dumps),  # not an object
    st.dictionaries(odd_text, json_values, max_size=6).map(lambda d: {k: v for k, v in d.items() if k != "answer"})
    .map(dumps),  # an object without an answer
    st.binary(max_size=60).map(lambda b: b"\xff" + b.replace(b"\n", b"")),  # not UTF-8
    st.binary(max_size=60).map(lambda b: b"{" + b.replace(b"\n", b"")),  # not JSON (UTF-8 or not)
    st.integers(4301, 20_000).map(lambda d: b'{"_input_hash": ' + b"7" * d + b', "answer": "accept"}'),
    st.integers(1000, 50_000).map(lambda n: b"[" * n + b"]" * n),  # nested deeper than the stack
    st.integers(1000, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.just(b"\x00\x00\x00"),
)


@st.composite
def batches(draw, items, max_lines: int = 12, min_lines: int = 1) -> list[Line]:
    """Known-good lines interleaved with bad and maybe-good ones; every line distinct."""
    lines = []
    for n in range(draw(st.integers(min_lines, max_lines))):
        kind = draw(st.sampled_from(["good", "good", "bad", "bad_record", "maybe"]))
        if kind == "good":
            record = good_record(items, n, n, draw(st.sampled_from(["accept", "accept", "reject", "ignore"])))
            lines.append(Line(dumps(record), "good", str(record["_input_hash"])))
        elif kind == "bad":
            lines.append(Line(draw(raw_bad_lines) + b" " * n, "bad"))  # distinct even when drawn twice
        elif kind == "bad_record":
            lines.append(Line(draw(bad_records(items, n)), "bad"))
        else:
            lines.append(Line(draw(maybe_records(items, n)), "maybe", str(HOSTILE_HASH_BASE + n)))
    return lines
