"""T-Library framing throughput: encode + decode of a typical event frame.

Prints frames per second, the median of 5 runs, for:

* ``encode+decode``: :func:`encode_frame` then :class:`FrameDecoder` fed in
  64 KiB chunks (what a connection does on both ends);
* ``encode``, ``decode`` alone;
* ``session``: ``ServerSession.send_event`` (catalogue validation, sequence
  and time stamps, encoding) then ``ClientSession.receive_data`` (decoding,
  validation, sequence check).

Usage: ``.venv/bin/python bench/bench_tlib.py [--frames N] [--runs 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.tlib.framing import FrameDecoder, encode_frame
from protocols.tlib.session import ClientSession, ServerSession

EVENT: dict[str, Any] = {
    "message": "EventEstablished",
    "AttributeThisDN": "1001",
    "AttributeOtherDN": "+33123456789",
    "AttributeThisDNRole": "Destination",
    "AttributeConnID": "006b02a5c9f1e001",
    "AttributeCallUUID": "QK3S0HN2ON1O1F7ADJNHMLQ8B4000001",
    "AttributeCallType": "Inbound",
    "AttributeANI": "+33123456789",
    "AttributeDNIS": "5000",
    "AttributeAgentID": "a1001",
    "AttributeUserData": {"customer": "gold", "language": "fr", "account": 123456},
    "AttributeEventSequenceNumber": 1234,
    "AttributeTimeinSecs": 1_700_000_000,
    "AttributeTimeinuSecs": 123456,
}
CHUNK = 65536


def bench_encode_decode(n: int) -> float:
    start = time.perf_counter()
    data = b"".join(encode_frame(EVENT) for _ in range(n))
    decoder = FrameDecoder()
    count = 0
    for i in range(0, len(data), CHUNK):
        decoder.feed(data[i : i + CHUNK])
        for _ in decoder:
            count += 1
    elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


def bench_encode(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        encode_frame(EVENT)
    return n / (time.perf_counter() - start)


def bench_decode(n: int) -> float:
    data = encode_frame(EVENT) * n
    start = time.perf_counter()
    decoder = FrameDecoder()
    count = 0
    for i in range(0, len(data), CHUNK):
        decoder.feed(data[i : i + CHUNK])
        for _ in decoder:
            count += 1
    elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


def bench_session(n: int) -> float:
    client = ClientSession(application_name="bench", now=0.0, addp_timeout=None)
    server = ServerSession(application_name="SIPS_bench", server_version="bench", now=0.0)
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    while server.next_event() or client.next_event():
        pass
    attrs = {k: v for k, v in EVENT.items() if k != "message" and "Time" not in k}
    del attrs["AttributeEventSequenceNumber"]
    received = 0
    start = time.perf_counter()
    for i in range(n):
        server.send_event("EventEstablished", 0.0, attrs)
        if i % 256 == 255 or i == n - 1:
            client.receive_data(server.data_to_send(), 0.0)
            while client.next_event() is not None:
                received += 1
    elapsed = time.perf_counter() - start
    assert received == n, received
    return n / elapsed


def median_rate(fn: Callable[[int], float], frames: int, runs: int) -> tuple[float, float, float]:
    rates = [fn(frames) for _ in range(runs)]
    return statistics.median(rates), min(rates), max(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = len(encode_frame(EVENT))
    print(f"typical event frame: {size} bytes; {args.frames} frames per run, {args.runs} runs")
    for label, fn in (
        ("encode+decode", bench_encode_decode),
        ("encode", bench_encode),
        ("decode", bench_decode),
        ("session", bench_session),
    ):
        med, low, high = median_rate(fn, args.frames, args.runs)
        print(
            f"{label:14s} median {med:12,.0f} frames/s  ({med * size / 1e6:6.1f} MB/s)  "
            f"min {low:,.0f}  max {high:,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
