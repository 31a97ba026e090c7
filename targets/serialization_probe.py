"""Ground truth for the serialization tests: json and pickle calls, each
made exactly N times on a known payload and timed around every call with
time.perf_counter_ns.

usage: serialization_probe.py N [--tag T]
       serialization_probe.py busy SECONDS [--tag T]
       serialization_probe.py strings N [--tag T]
       serialization_probe.py libraries N [--tag T]
       serialization_probe.py paced RATE SECONDS [--tag T]

Imports json and pickle, prints "ready", waits for a line on stdin, makes
the calls, prints a JSON line {codec_op: {"calls": N, "ns": total}}, then
"done", and waits for stdin to close. `busy` instead calls json.dumps on a
small document as fast as it can for SECONDS and reports the calls made;
`strings` calls json.dumps on a plain string N times (one call each of
_json's py_encode_basestring_ascii). `libraries` does what N does with
the third-party codecs instead: orjson, msgpack, protobuf (upb) and
pydantic-core, which must be installed (targets/.venv has them).
`paced` calls json.dumps on a small document RATE times a second for
SECONDS, on schedule, and reports the calls made.
"""

import json
import pickle
import sys
import time


def busy(seconds: float) -> None:
    doc = {"id": 1, "text": "why is the gpu idle"}
    print("ready", flush=True)
    sys.stdin.readline()
    calls = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        json.dumps(doc)
        calls += 1
    print('{"json_encode": {"calls": %d}}' % calls, flush=True)
    print("done", flush=True)
    sys.stdin.read()


def paced(rate: float, seconds: float) -> None:
    doc = {"id": 1, "text": "why is the gpu idle"}
    print("ready", flush=True)
    sys.stdin.readline()
    calls = int(rate * seconds)
    start = time.monotonic()
    for i in range(calls):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        json.dumps(doc)
    print('{"json_encode": {"calls": %d}}' % calls, flush=True)
    print("done", flush=True)
    sys.stdin.read()


def strings(n: int) -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        json.dumps("why is the gpu idle")
    print('{"json_str_encode": {"calls": %d}}' % n, flush=True)
    print("done", flush=True)
    sys.stdin.read()


def payload_of(n: int) -> dict:
    # Big enough that each call takes a fraction of a millisecond, so the
    # microseconds a probe costs do not dominate the comparison.
    return {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b", "c"], "score": i * 0.5}
                      for i in range(n)]}


def library_calls(payload: dict) -> list:
    """(name, function, argument) for each third-party codec call."""
    import msgpack
    import orjson
    from google.protobuf import struct_pb2
    from pydantic_core import SchemaSerializer, SchemaValidator, core_schema

    message = struct_pb2.Struct()
    message.update(payload)
    schema = core_schema.dict_schema()
    serializer, validator = SchemaSerializer(schema), SchemaValidator(schema)
    return [
        ("orjson_encode", orjson.dumps, payload),
        ("orjson_decode", orjson.loads, orjson.dumps(payload)),
        ("msgpack_encode", msgpack.packb, payload),
        ("msgpack_decode", msgpack.unpackb, msgpack.packb(payload)),
        ("protobuf_encode", message.SerializeToString, None),
        ("protobuf_decode", struct_pb2.Struct().ParseFromString, message.SerializeToString()),
        ("pydantic_encode", serializer.to_json, payload),
        ("pydantic_decode", validator.validate_json, orjson.dumps(payload)),
    ]


def main() -> None:
    if sys.argv[1] == "busy":
        busy(float(sys.argv[2]))
        return
    if sys.argv[1] == "paced":
        paced(float(sys.argv[2]), float(sys.argv[3]))
        return
    if sys.argv[1] == "strings":
        strings(int(sys.argv[2]))
        return
    if sys.argv[1] == "libraries":
        n = int(sys.argv[2])
        calls = library_calls(payload_of(2000))
    else:
        n = int(sys.argv[1])
        payload = payload_of(2000)
        calls = [
            ("json_encode", json.dumps, payload),
            ("json_decode", json.loads, json.dumps(payload)),
            ("pickle_encode", pickle.dumps, payload),
            ("pickle_decode", pickle.loads, pickle.dumps(payload)),
        ]
    print("ready", flush=True)
    sys.stdin.readline()
    measured = {}
    for name, fn, arg in calls:
        total = 0
        for _ in range(n):
            t0 = time.perf_counter_ns()
            result = fn() if arg is None else fn(arg)
            total += time.perf_counter_ns() - t0
            # Freed outside the timed window: deallocating a decoded
            # document is not part of the call.
            del result
        measured[name] = {"calls": n, "ns": total}
    # Written by hand: json.dumps here would be one more call to count.
    fields = ", ".join(f'"{k}": {{"calls": {v["calls"]}, "ns": {v["ns"]}}}' for k, v in measured.items())
    print("{" + fields + "}", flush=True)
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
