"""Where the CPU of one REST predict goes (issue 14 goal 5): each step of ``odal serve``'s REST path, timed alone.

    python bench/profile_rest_predict.py --saved-model PATH/TO/EXPORT/VERSION [--repeats 15]

One 640x480 RGB image as JSON numbers (``{"instances": [[[[r, g, b], ...]]]}``, 3.9 MB).  Each step is run
``--repeats`` times and its median *thread CPU time* is printed (not wall time: on a shared machine the wall time
of a step is mostly waiting for a core).  The steps are the ones ``serving/rest_api.py`` runs, in order: h11
reading the body, ``rest_fast.split``, ``rest_fast.request_tensors`` (the C parse), the model call (CPU of
the calling thread only: TF's own threads are not counted), ``rest_json.response_json``.  The gRPC path has only
the model call and a memcpy-like tensor decode, so the parse step is what separates the two.
"""

from __future__ import annotations

import argparse
import sys
import time

import h11
import numpy as np
import orjson

from odal.serving import rest_fast, rest_json
from odal.serving._protos import types_pb2


def _cpu_ms(step, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.thread_time()
        result = step()
        times.append(time.thread_time() - start)
    return sorted(times)[len(times) // 2] * 1000, result


def _read_body(request: bytes) -> bytes:
    connection, chunks = h11.Connection(h11.SERVER), []
    for at in range(0, len(request), 65536):
        connection.receive_data(request[at:at + 65536])
        while (event := connection.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
    raise RuntimeError("the request did not end")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", required=True)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    import tensorflow as tf

    function = tf.saved_model.load(args.saved_model).signatures["serving_default"]
    image = np.random.default_rng(0).integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    body = orjson.dumps({"instances": image.tolist()})
    request = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    dtypes = {"input_tensor": types_pb2.DT_UINT8}
    rows = []
    ms, _ = _cpu_ms(lambda: _read_body(request), args.repeats)
    rows.append(("h11: read the body", ms))
    ms, split = _cpu_ms(lambda: rest_fast.split(body), args.repeats)
    rows.append(("rest_fast.split", ms))
    ms, parsed = _cpu_ms(lambda: rest_fast.request_tensors(split, dtypes), args.repeats)
    assert parsed is not None and np.array_equal(parsed[1]["input_tensor"], image)
    rows.append(("rest_fast.request_tensors (the C parse; numpy without the extension)", ms))
    ms, outputs = _cpu_ms(lambda: {k: v.numpy() for k, v in function(input_tensor=tf.constant(image)).items()},
                          args.repeats)
    rows.append(("model call (calling thread only)", ms))
    ms, _ = _cpu_ms(lambda: rest_json.response_json(outputs, rest_json.ROW), args.repeats)
    rows.append(("rest_json.response_json", ms))
    print(f"body {len(body)} bytes; median thread CPU ms of {args.repeats}")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
