"""Benchmark of the SIP message parser and serialiser against the ``sipmessage`` package.

Single core. Workloads (each the median of 5 runs):

* parse a ~600-byte INVITE and read Via (branch), From (tag), To (tag),
  Call-ID and CSeq — what a proxy reads for every request;
* serialise a request built in code;
* serialise an unmodified parsed request.

Targets: parse+read >= 50,000 messages/s, serialise >= 100,000 messages/s.
Run: ``.venv/bin/python bench/bench_parser.py [--n 20000]``; ``--profile`` runs
cProfile on our parse+read workload. The machines are shared, so compare the
ratio to ``sipmessage`` measured in the same run rather than absolute rates.
The last line printed is ``RESULT {json}``: per workload the medians (msg/s),
the ratio, the target and the failure counts, for a driver to collect.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sipmessage

from protocols.sip import COMPILED
from protocols.sip.headers import Headers
from protocols.sip.message import Request, parse_message

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: sipcluster-bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)


def ours_parse_read() -> object:
    m = parse_message(INVITE)
    via = m.top_via
    return (via.branch, m.from_.tag, m.to.tag, m.call_id, m.cseq.number, m.cseq.method)


def theirs_parse_read() -> object:
    m = sipmessage.Message.parse(INVITE)
    via = m.via[0]
    return (
        via.parameters.get("branch"),
        m.from_address.parameters.get("tag"),
        m.to_address.parameters.get("tag"),
        m.call_id,
        m.cseq.sequence,
        m.cseq.method,
    )


def ours_built() -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport")
    h.add("Max-Forwards", "70")
    h.add("To", "Bob <sip:bob@biloxi.example.com>")
    h.add("From", "Alice <sip:alice@atlanta.example.com>;tag=1928301774")
    h.add("Call-ID", "a84b4c76e66710@pc33.atlanta.example.com")
    h.add("CSeq", "314159 INVITE")
    h.add("Contact", "<sip:alice@pc33.atlanta.example.com>")
    h.add("Supported", "replaces, timer")
    h.add("User-Agent", "sipcluster-bench/1.0")
    h.add("Content-Type", "application/sdp")
    return Request("INVITE", "sip:bob@biloxi.example.com", h, SDP)


def theirs_built() -> sipmessage.Request:
    m = sipmessage.Request("INVITE", sipmessage.URI.parse("sip:bob@biloxi.example.com"), SDP)
    h = m.headers
    h.add("Via", "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport")
    h.add("Max-Forwards", "70")
    h.add("To", "Bob <sip:bob@biloxi.example.com>")
    h.add("From", "Alice <sip:alice@atlanta.example.com>;tag=1928301774")
    h.add("Call-ID", "a84b4c76e66710@pc33.atlanta.example.com")
    h.add("CSeq", "314159 INVITE")
    h.add("Contact", "<sip:alice@pc33.atlanta.example.com>")
    h.add("Supported", "replaces, timer")
    h.add("User-Agent", "sipcluster-bench/1.0")
    h.add("Content-Type", "application/sdp")
    h.add("Content-Length", str(len(SDP)))
    return m


def rate(fn: Callable[[], object], n: int, runs: int = 5) -> tuple[float, int]:
    """Median messages/s over ``runs`` runs of ``n`` calls, and the exception count."""
    rates = []
    failures = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            try:
                fn()
            except Exception:
                failures += 1
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per run")
    parser.add_argument("--profile", action="store_true", help="cProfile our parse+read")
    args = parser.parse_args()

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.n):
            ours_parse_read()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return 0

    assert ours_parse_read() == theirs_parse_read(), "the two parsers disagree"
    built, their_built = ours_built(), theirs_built()
    parsed, their_parsed = parse_message(INVITE), sipmessage.Message.parse(INVITE)
    assert parse_message(built.serialize()) == built

    workloads = [
        ("parse + read Via/From/To/Call-ID/CSeq", ours_parse_read, theirs_parse_read, 50_000),
        ("serialise message built in code", built.serialize, their_built.__bytes__, 100_000),
        ("serialise unmodified parsed message", parsed.serialize, their_parsed.__bytes__,
         100_000),
    ]
    build = "mypyc-compiled" if COMPILED else "pure Python"
    print(f"INVITE size: {len(INVITE)} bytes; {args.n} messages per run, median of 5 runs; "
          f"{build} SIP stack\n")
    print("| workload | ours (msg/s) | sipmessage (msg/s) | ratio | target "
          "| failures ours/theirs |")
    print("|---|---:|---:|---:|---:|---:|")
    ok = True
    results = []
    for (label, ours, theirs, target), key in zip(
        workloads, ("parse_read", "serialise_built", "serialise_parsed"), strict=True
    ):
        r_ours, f_ours = rate(ours, args.n)
        r_theirs, f_theirs = rate(theirs, args.n)
        met = r_ours >= target and f_ours == 0
        ok = ok and met
        print(
            f"| {label} | {r_ours:,.0f} | {r_theirs:,.0f} | {r_ours / r_theirs:.1f}x "
            f"| {target:,} | {f_ours}/{f_theirs} |"
        )
        results.append({
            "workload": key,
            "label": label,
            "ours_msg_s": round(r_ours),
            "sipmessage_msg_s": round(r_theirs),
            "ratio": round(r_ours / r_theirs, 2),
            "target_msg_s": target,
            "target_met": met,
            "failures_ours": f_ours,
            "failures_sipmessage": f_theirs,
        })
    print(f"\ntargets met: {'yes' if ok else 'NO'}")
    summary = {
        "bench": "sip_parser",
        "messages_per_run": args.n,
        "runs": 5,
        "statistic": "median",
        "invite_bytes": len(INVITE),
        "compiled": COMPILED,
        "workloads": results,
        "targets_met": ok,
    }
    print("RESULT " + json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
