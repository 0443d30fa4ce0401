"""Benchmark: complete non-INVITE transactions through two transaction layers.

A client ``TransactionLayer`` and a server ``TransactionLayer`` are wired back
to back with a fake clock: the client TU builds an OPTIONS request, the client
transaction serialises it, the server parses the bytes and creates its
transaction, the server TU answers 200 with ``make_response``, the response is
serialised, parsed by the client and matched to its transaction. Timers are
handled as the fake clock advances (1 ms per transaction), so timer K fires and
removes client transactions over UDP.

Prints the median rate of 5 runs per transport, on one core, next to the
same message work done without any transaction layer ("messages only": build
the request, serialise, parse, make_response, serialise, parse), which is the
floor the message model sets. Rates are given by wall time and by the
process's CPU time (steadier on a shared machine); the ratio to "messages
only" in the same run is the figure to compare between machines. The last
line is ``RESULT {json}``: medians, failures, whether the mypyc-compiled
modules were in use (``make compile``; ``SIPCLUSTER_PURE_PYTHON=1`` measures
the pure Python sources) and whether the target of 20,000 complete
transactions per second (wall time, both transports) is met.

    .venv/bin/python bench/bench_transaction.py [--count 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.sip import COMPILED
from protocols.sip.headers import Headers
from protocols.sip.message import Request, make_response, parse_message
from protocols.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTerminated,
    make_branch,
)

CLIENT = ("127.0.1.1", 5060)
SERVER = ("127.0.1.2", 5060)


TARGET = 20000.0


def run(count: int, transport: str) -> tuple[float, float, int]:
    """Run ``count`` OPTIONS transactions; return (wall seconds, CPU seconds, completed)."""
    client = TransactionLayer()
    server = TransactionLayer()
    now = 0.0
    completed = 0
    call_prefix = "bench-"
    cpu_started = time.process_time()
    started = time.perf_counter()
    for i in range(count):
        now += 0.001
        # Client TU: a new out-of-dialog request.
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport} 127.0.1.1:5060;branch={client.new_branch()}")
        headers.add("Max-Forwards", "70")
        headers.add("From", "<sip:bench@127.0.1.1>;tag=b1")
        headers.add("To", "<sip:uas@127.0.1.2>")
        headers.add("Call-ID", f"{call_prefix}{i}@127.0.1.1")
        headers.add("CSeq", "1 OPTIONS")
        request = Request("OPTIONS", "sip:uas@127.0.1.2", headers)
        client.send_request(request, SERVER, now, transport=transport)
        for out in client.messages_to_send():
            server.receive(out.data, CLIENT, now, transport)
        # Server TU: answer every new request with 200.
        while (event := server.next_event()) is not None:
            if isinstance(event, RequestReceived):
                response = make_response(event.request, 200, to_tag="s1")
                server.send_response(response, now, key=event.key)
        for out in server.messages_to_send():
            client.receive(out.data, SERVER, now, transport)
        while (event := client.next_event()) is not None:
            if isinstance(event, ResponseReceived) and event.response.status == 200:
                completed += 1
            elif not isinstance(event, TransactionTerminated):
                raise RuntimeError(f"unexpected event {event}")
        for layer in (client, server):
            deadline = layer.next_timer()
            if deadline is not None and deadline <= now:
                layer.handle_timer(now)
                if layer.messages_to_send():
                    raise RuntimeError("unexpected retransmission")
    elapsed = time.perf_counter() - started
    return elapsed, time.process_time() - cpu_started, completed


def run_messages_only(count: int, transport: str) -> tuple[float, float]:
    """The same building, serialising and parsing without any transaction layer.

    This is the floor the message model sets; the difference to :func:`run`
    is what the transaction layer costs. Returns (wall seconds, CPU seconds).
    """
    cpu_started = time.process_time()
    started = time.perf_counter()
    for i in range(count):
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport} 127.0.1.1:5060;branch={make_branch()}")
        headers.add("Max-Forwards", "70")
        headers.add("From", "<sip:bench@127.0.1.1>;tag=b1")
        headers.add("To", "<sip:uas@127.0.1.2>")
        headers.add("Call-ID", f"bench-{i}@127.0.1.1")
        headers.add("CSeq", "1 OPTIONS")
        request = Request("OPTIONS", "sip:uas@127.0.1.2", headers)
        _ = request.top_via.branch
        received = parse_message(request.serialize())
        _ = (received.top_via.branch, received.cseq.method, received.call_id)
        assert isinstance(received, Request)
        response = parse_message(make_response(received, 200, to_tag="s1").serialize())
        _ = (response.top_via.branch, response.cseq.method)
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    count = args.count
    names = ("messages only", "UDP", "TCP")
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu_rates: dict[str, list[float]] = {name: [] for name in names}
    failures = 0
    # Rounds interleave the three workloads so that each round sees the same load
    # on a shared machine; the medians are then comparable.
    for _ in range(args.runs):
        wall, cpu = run_messages_only(count, "UDP")
        rates["messages only"].append(count / wall)
        cpu_rates["messages only"].append(count / cpu)
        for transport in ("UDP", "TCP"):
            wall, cpu, completed = run(count, transport)
            failures += count - completed
            rates[transport].append(completed / wall)
            cpu_rates[transport].append(completed / cpu)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_rates.items()}
    floor = medians["messages only"]
    cpu_floor = cpu_medians["messages only"]
    build = "mypyc-compiled" if COMPILED else "pure Python"
    print(f"{count} OPTIONS/200 per run, {args.runs} runs, one core, {build} SIP stack, "
          f"failures {failures}")
    for name, values in rates.items():
        median = medians[name]
        print(
            f"{name:>13}: median {median:9,.0f}/s ({1e6 / median:6.1f} us each), "
            f"min {min(values):9,.0f}, max {max(values):9,.0f}, "
            f"{median / floor:4.0%} of messages only; "
            f"CPU time {1e6 / cpu_medians[name]:6.1f} us each "
            f"({cpu_medians[name] / cpu_floor:4.0%})"
        )
    met = failures == 0 and min(medians["UDP"], medians["TCP"]) >= TARGET
    result = {
        "count": count,
        "compiled": COMPILED,
        "runs": args.runs,
        "median_per_s": {name: round(value) for name, value in medians.items()},
        "cpu_median_per_s": {name: round(value) for name, value in cpu_medians.items()},
        "ratio_to_messages_only": {
            name: round(medians[name] / floor, 3) for name in ("UDP", "TCP")
        },
        "failures": failures,
        "target_per_s": TARGET,
        "target_met": met,
    }
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
