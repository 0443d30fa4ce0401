"""Summary rows from the benchmark scripts' ``RESULT {json}`` lines.

Each ``bench/bench_*.py`` ends with one JSON object; :func:`rows_for` maps
it to rows of the summary table (what, ours, target, met?, failures, CPU s
per 1,000 transactions, Kamailio, ratio, memory). Missing keys print
``n/a``: a script that changed its JSON or failed half-way never breaks
the report.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NA = "n/a"
KIB = 1024


@dataclass
class Row:
    """One figure of the summary table (every cell already text)."""

    what: str
    ours: str = NA
    target: str = NA
    met: str = NA
    failures: str = NA
    cpu: str = NA
    kamailio: str = NA
    ratio: str = NA
    memory: str = NA

    def cells(self) -> list[str]:
        return [self.what, self.ours, self.target, self.met, self.failures, self.cpu,
                self.kamailio, self.ratio, self.memory]


HEADER = ["what", "ours", "target", "met?", "failures", "CPU s / 1,000", "Kamailio",
          "ratio ours/Kamailio (or as noted)", "memory"]


def get(data: Any, *path: str | int) -> Any:
    """``data[path0][path1]...`` or None when any step is missing."""
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def num(value: Any, fmt: str = "{:,.0f}", unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NA
    if value != value:  # NaN
        return NA
    return fmt.format(value) + unit


def yes_no(value: Any) -> str:
    if value is None:
        return NA
    return "yes" if value else "**NO**"


def at_least(value: Any, target: float) -> str:
    return yes_no(value >= target) if isinstance(value, int | float) else NA


def at_most(value: Any, target: float) -> str:
    return yes_no(value <= target) if isinstance(value, int | float) else NA


def percent(share: Any) -> float | None:
    """A share (0..1) as a percentage, None when it is not a number."""
    return share * 100 if isinstance(share, int | float) and not isinstance(share, bool) else None


# --------------------------------------------------------------------------- per script


def parser_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for w in r.get("workloads") or []:
        rows.append(Row(
            f"SIP parser: {w.get('label', w.get('workload', '?'))}",
            num(w.get("ours_msg_s"), unit=" msg/s"),
            num(w.get("target_msg_s"), "≥ {:,.0f}", " msg/s"),
            yes_no(w.get("target_met")),
            num(w.get("failures_ours"), "{:d}"),
            ratio=num(w.get("ratio"), "{:.1f}x vs sipmessage")))
    return rows or [Row("SIP parser")]


def transaction_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    target = r.get("target_per_s")
    for transport in ("UDP", "TCP"):
        rate = get(r, "median_per_s", transport)
        cpu_rate = get(r, "cpu_median_per_s", transport)
        rows.append(Row(
            f"non-INVITE transactions, two transaction layers, {transport}",
            num(rate, unit=" /s"), num(target, "≥ {:,.0f}", " /s"),
            at_least(rate, target) if isinstance(target, int | float) else NA,
            num(r.get("failures"), "{:d}"),
            num(1000.0 / cpu_rate if isinstance(cpu_rate, int | float) and cpu_rate else None,
                "{:.3f}")))
    return rows


def tlib_rows(r: dict[str, Any]) -> list[Row]:
    return [Row("T-Library framing (encode/decode)", "see its table (no RESULT line)")]


def node_calls_rows(r: dict[str, Any]) -> list[Row]:
    failures = [f"{r['failed_calls']} failed calls" if "failed_calls" in r else None,
                f"{r['events_missing']} events missing" if "events_missing" in r else None]
    return [Row(
        f"sip-server call setups (B2BUA), offered {num(r.get('offered_rate'))}/s",
        num(r.get("median_calls_per_s"), "{:,.1f}", " calls/s"), NA, NA,
        ", ".join(f for f in failures if f) or NA,
        num(r.get("cpu_s_per_1000_calls"), "{:.3f}"))]


def proxy_rows(r: dict[str, Any]) -> list[Row]:
    rows = [
        Row("sip-proxy memory per binding (100,000 bindings, tracemalloc)",
            num(r.get("bytes_per_binding"), unit=" B"), "≤ 2,048 B",
            at_most(r.get("bytes_per_binding"), 2048),
            memory=num(r.get("bytes_per_binding"), unit=" B/binding")),
        Row("sip-proxy catch-up of the bindings from a peer",
            num(r.get("catch_up_seconds"), "{:.2f}", " s"), "< 10 s",
            yes_no(r["catch_up_seconds"] < 10)
            if isinstance(r.get("catch_up_seconds"), int | float) else NA),
    ]
    if "sipp_error" in r:
        rows.append(Row("sip-proxy SIPp loads", r["sipp_error"]))
    for kind, label in (("register", "REGISTER relayed to the node"),
                        ("invite", "proxy-only calls (INVITE/ACK/BYE)")):
        ours = r.get(f"{kind}_ours")
        kam = r.get(f"{kind}_kamailio")
        if ours is None and kam is None:
            continue
        ours = ours or {}
        kam = kam or {}
        rate_ratio = r.get(f"{kind}_rate_ratio_ours_over_kamailio")
        cpu_ratio = r.get(f"{kind}_cpu_ratio_ours_over_kamailio")
        failures = f"{num(ours.get('failed'), '{:,.0f}')} failed, " \
                   f"{num(ours.get('retrans'), '{:,.0f}')} retrans"
        rows.append(Row(
            f"sip-proxy {label}: max zero-failure rate",
            num(ours.get("rate"), unit=" /s"), NA, NA, failures,
            num(ours.get("cpu_s_per_1000"), "{:.3f}"),
            f"{num(kam.get('rate'), unit=' /s')}, CPU {num(kam.get('cpu_s_per_1000'), '{:.3f}')}",
            f"rate {num(rate_ratio, '{:.2f}')}, CPU {num(cpu_ratio, '{:.2f}')}"))
    return rows


def tcontroller_rows(r: dict[str, Any]) -> list[Row]:
    targets = r.get("targets") or {}
    fan = r.get("fanout_delivered_events_per_s")
    fan_target = targets.get("fanout_delivered_events_per_s", 20000)
    p99 = r.get("rtt_p99_ms")
    p99_target = targets.get("rtt_p99_ms", 5)
    cpu_ms = r.get("fanout_cpu_ms_per_1000_delivered")
    return [
        Row(f"t-controller event fan-out to {num(r.get('clients'))} desktops",
            num(fan, unit=" events/s"), num(fan_target, "≥ {:,.0f}", " events/s"),
            at_least(fan, fan_target), NA,
            num(cpu_ms / 1000 if isinstance(cpu_ms, int | float) else None, "{:.3f}")),
        Row(f"t-controller request round trip at {num(r.get('request_rate'))}/s, p99",
            num(p99, "{:.2f}", " ms") + f" (p50 {num(r.get('rtt_p50_ms'), '{:.2f}')} ms)",
            num(p99_target, "< {:g}", " ms"),
            yes_no(p99 < p99_target) if isinstance(p99, int | float) else NA,
            "exit " + num(r.get("daemon_exit_code"), "{:d}")),
    ]


def mesh_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    counts = r.get("counts") or {}
    if counts:
        four_on = counts.get("4-on") or {}
        four_off = counts.get("4-off") or {}
        rows.append(Row(
            "t-controller mesh: messages per DN state change, 4 nodes",
            f"{num(get(four_on, 'mesh'), '{:.2f}')} with smart-proxy-enabled, "
            f"{num(get(four_off, 'mesh'), '{:.2f}')} without"))
    lat = r.get("latency") or {}
    if lat:
        rows.append(Row(
            f"state change to a desktop on another node at {num(lat.get('rate'))}/s, p99",
            num(lat.get("p99_ms"), "{:.2f}", " ms") + f" (p50 {num(lat.get('p50_ms'), '{:.2f}')})",
            "< 20 ms", yes_no(lat["p99_ms"] < 20)
            if isinstance(lat.get("p99_ms"), int | float) else NA,
            num(lat.get("undelivered"), "{:d}", " undelivered")))
    bulk = r.get("bulk") or {}
    if bulk:
        secs = bulk.get("seconds")
        rows.append(Row(
            f"Smart Proxy bulk registration of {num(bulk.get('dns'))} DNs on 4 nodes",
            num(secs, "{:.2f}", " s") if secs is not None else f"not measured: "
            f"{bulk.get('error', NA)}", "< 10 s",
            yes_no(secs < 10) if isinstance(secs, int | float) else NA,
            f"{num(bulk.get('registered'))} in service" if "registered" in bulk else NA))
    mem = r.get("memory") or {}
    if mem:
        per = mem.get("bytes_per_dn")
        rows.append(Row(
            f"t-controller memory per DN with an agent ({num(mem.get('dns'))} DNs, tracemalloc)",
            num(per / KIB if isinstance(per, int | float) else None, "{:.2f}", " KiB"),
            "≤ 5 KiB", at_most(per, 5 * KIB), NA,
            memory=num(per / KIB if isinstance(per, int | float) else None, "{:.2f}",
                       " KiB/DN")))
    return rows or [Row("t-controller mesh")]


def node_memory_rows(r: dict[str, Any]) -> list[Row]:
    def kib(key: str) -> str:
        v = r.get(key)
        return num(v / KIB if isinstance(v, int | float) else None, "{:.2f}", " KiB")
    reg = num(r.get("register_failed"), "{:d}", " failed REGISTERs")
    logins = num(r.get("agent_refused"), "{:d}", " refused logins")
    return [
        Row(f"sip-server RSS per registered DN ({num(r.get('dns'))} DNs)", kib("node_bytes_per_dn"),
            NA, NA, reg, memory=kib("node_bytes_per_dn") + "/DN"),
        Row("sip-server RSS per DN with a logged-in agent", kib("node_bytes_per_dn_with_agent"),
            "≤ 5 KiB", at_most(r.get("node_bytes_per_dn_with_agent"), 5 * KIB), logins,
            memory=kib("node_bytes_per_dn_with_agent") + "/DN"),
        Row("t-controller RSS per DN with a logged-in agent", kib("tc_bytes_per_dn_with_agent"),
            "≤ 5 KiB", at_most(r.get("tc_bytes_per_dn_with_agent"), 5 * KIB), logins,
            memory=kib("tc_bytes_per_dn_with_agent") + "/DN"),
        Row(f"sip-server RSS per active call ({num(r.get('calls_up_at_sample'))} calls up)",
            kib("node_bytes_per_call"), "≤ 20 KiB",
            at_most(r.get("node_bytes_per_call"), 20 * KIB),
            num(r.get("calls_failed"), "{:d}", " failed calls"),
            memory=kib("node_bytes_per_call") + "/call"),
    ]


def security_rows(r: dict[str, Any]) -> list[Row]:
    if "error" in r:
        return [Row("SIPVicious against the sip-proxy", r["error"])]
    found = [f"{sv.get('method')}: {sorted(sv.get('found') or {}) or 'nothing'}"
             for sv in r.get("svwar") or []]
    leak = r.get("enumeration_leak")
    att = r.get("attack") or {}
    by = r.get("bystander") or {}
    worst = max((s.get("max_ms") or 0 for s in by.values()), default=None)
    return [
        Row("svwar extension enumeration 1000-1020 (exist: "
            f"{', '.join(r.get('existing_in_range') or []) or NA})",
            "; ".join(found) or NA, "tells nothing",
            yes_no(not leak) if leak is not None else NA),
        Row("svcrack password guessing on one extension",
            f"{num(r.get('guesses_per_s_before_slowdown'), '{:.2f}')} guesses/s, slowed "
            f"{num(r.get('guesses_per_s_slowed'), '{:.2f}')}/s, then blocked "
            f"({num(get(att, 'blocked', 'guesses'), '{:d}')} refused); cracked: "
            f"{'yes' if r.get('attack_cracked') else 'no'}",
            "slowed, then blocked; not cracked",
            yes_no(not r.get("attack_cracked") and bool(r.get("blocked_sources")))
            if "attack_cracked" in r else NA,
            f"control run cracked: {'yes' if r.get('control_cracked') else 'NO'}"),
        Row("another source served during the attacks",
            f"worst round trip {num(worst, '{:.1f}', ' ms')}", "all answered",
            yes_no(r.get("bystander_served")),
            ", ".join(f"{k}: {s.get('unanswered')} unanswered" for k, s in by.items()
                      if s.get("unanswered")) or "0 unanswered"),
    ]


def feature_server_rows(r: dict[str, Any]) -> list[Row]:
    p99 = get(r, "lookup", "10000", "p99_us")
    linear = get(r, "lookup", "10000", "linear_p99_us")
    quiet = get(r, "quiet_reload", "seconds")
    loaded = get(r, "reload", "seconds")
    failed = get(r, "reload", "failed")
    return [
        Row("dial-plan look-up p99, 10,000 rules", num(p99, "{:.1f}", " µs"), "< 50 µs",
            at_most(p99, 50), "0",
            ratio=num(linear / p99 if isinstance(linear, int | float) and p99 else None,
                      "{:.0f}x faster than a regex list")),
        Row("dial-plan reload, 100,000 rules (idle / under queries; met: under queries)",
            f"{num(quiet, '{:.2f}')} / {num(loaded, '{:.2f}')} s", "< 1 s, 0 failed",
            yes_no(isinstance(loaded, int | float) and loaded < 1 and failed == 0),
            num(failed, "{:d}")),
        Row("node -> feature-server query p99", num(get(r, "http", "p99_us"), "{:.0f}", " µs"),
            failures=num(get(r, "http", "failed"), "{:d}")),
    ]


def status_rows(r: dict[str, Any]) -> list[Row]:
    load = r.get("load_seconds")
    per_user = r.get("bytes_per_user")
    p99 = r.get("p99_ms")
    fo = r.get("failover_seconds")
    failures = len(r.get("failures") or [])
    lost = f"{num(r.get('missing'), '{:d}')} missing, {num(r.get('gaps'), '{:d}')} gaps"
    return [
        Row(f"status-aggregator: {num(r.get('users'))} users from "
            f"{num(r.get('publishers'))} publishers loaded",
            num(load, "{:.1f}", " s"), "< 30 s", at_most(load, 30), num(failures, "{:d}"),
            memory=num(per_user, "{:,.0f}", " B/user (<= 2 KiB)")),
        Row(f"status-aggregator: publish -> event p99, {num(r.get('achieved_rate'))} changes/s, "
            f"{num(r.get('watches'))} watches",
            num(p99, "{:.1f}", " ms"), "< 100 ms, 0 missing, 0 gaps",
            yes_no(isinstance(p99, int | float) and p99 < 100 and r.get("missing") == 0
                   and r.get("gaps") == 0), lost,
            cpu=num(r.get("cpu_s_per_1000"), "{:.3f}")),
        Row("status-aggregator: fail-over to the mirror, watchers restored",
            num(fo, "{:.2f}", " s"), "< 5 s", at_most(fo, 5)),
    ]


def voicemail_rows(r: dict[str, Any]) -> list[Row]:
    m = r.get("median") or {}
    sched = f"SCHED_FIFO {r['realtime']}" if r.get("realtime") else "normal scheduling"
    failures = num(r.get("failures"), "{:d}")
    cpu = num(m.get("cpu_per_1000_packets"), "{:.3f}")
    return [
        Row(f"voicemail: {num(r.get('sessions'))} sessions, RTP send lateness p99 ({sched})",
            num(m.get("jitter_p99_ms"), "{:.1f}", " ms"), "< 5 ms",
            at_most(m.get("jitter_p99_ms"), 5), failures, cpu=f"{cpu} per 1,000 packets"),
        Row("voicemail: frames sent > 10 ms late", num(m.get("late_percent"), "{:.2f}", " %"),
            "< 0.5 %", at_most(m.get("late_percent"), 0.5), failures),
        Row("voicemail: MWI NOTIFY after the deposit is stored, p99",
            num(m.get("mwi_p99_ms"), "{:.1f}", " ms"), "< 200 ms",
            at_most(m.get("mwi_p99_ms"), 200), failures),
    ]


def drill_rows(r: dict[str, Any]) -> list[Row]:
    growth = r.get("memory_mb_per_hour") or {}
    worst = max(growth.items(), key=lambda kv: kv[1]) if growth else None
    return [Row(f"lab drill {num(r.get('minutes'))} min: proxy, node, t-controller killed, "
                "data centres cut",
                f"{num(r.get('lost_bindings'), '{:d}')} lost bindings, "
                f"{num(r.get('stale_bindings'), '{:d}')} stale, "
                f"{num(r.get('calls_left_up'), '{:d}')} calls left up",
                "0 lost, 0 stale, 0 left up", yes_no(bool(r.get("ok"))),
                f"{num(r.get('calls_failed'), '{:d}')} of "
                f"{num((r.get('calls_ok') or 0) + (r.get('calls_failed') or 0), '{:d}')} calls "
                f"failed: {json.dumps(r.get('failed_by_fault'))}",
                memory=f"worst growth {worst[0]} {worst[1]:+.1f} MB/h" if worst else NA)]


def hostile_rows(r: dict[str, Any]) -> list[Row]:
    """bench_hostile: the t-controller's and the geo DNS's memory under clients that
    never read or flood, beside the growth measured before the bounds."""
    before = r.get("before_fix") or {}
    failures = "; ".join(r.get("failures") or []) or "none"
    return [
        Row(f"t-controller, a client that never reads sends {num(r.get('requests_offered'))} "
            "requests",
            f"took {num(r.get('requests_taken'))}, RSS "
            f"+{num(r.get('requests_rss_growth_mb'), '{:.1f}')} MB",
            "reading paused; memory bounded", yes_no(not r.get("failures")), failures,
            memory=f"before the bounds +{num(before.get('requests_rss_growth_mb'))} MB",
            ratio=f"well-behaved desktop p99 {num(r.get('requests_good_p99_ms'), '{:.2f}')} ms"),
        Row(f"t-controller, a desktop that does not read gets {num(r.get('events'))} events",
            f"dropped {num(r.get('events_dropped'))}, RSS "
            f"+{num(r.get('events_rss_growth_mb'), '{:.1f}')} MB; 3x the events "
            f"+{num(r.get('events_3x_rss_growth_mb'), '{:.1f}')} MB; the reading desktop "
            f"alone +{num(r.get('events_reading_only_rss_growth_mb'), '{:.1f}')} MB",
            "dropped; memory bounded", yes_no(not r.get("failures")),
            f"{num(r.get('events_good_missing'))} events missing at the reading desktop",
            memory=f"before the bounds +{num(before.get('events_rss_growth_mb'))} MB"),
        Row(f"geo DNS, a burst of {num(r.get('dns_queries'))} unpaced queries",
            f"{num(r.get('dns_answered'))} answered, {num(r.get('dns_kernel_drops'))} kernel drops",
            "answered or counted", NA, NA,
            memory=f"before: {num(before.get('dns_answered'))} answered, "
                   f"{num(before.get('dns_kernel_drops'))} drops"),
    ]


def failover_rows(r: dict[str, Any]) -> list[Row]:
    """One row per measured failure: median seconds until the cluster's view
    changed (min-max), calls failed around it, and whether WAN was emulated."""
    wan = (f", WAN {num(get(r, 'wan', 'delay_ms'), '{:g}')} ms each way "
           f"{num(get(r, 'wan', 'loss_percent'), '{:g}')} % loss"
           if get(r, "wan", "emulated") else ", no WAN emulation")
    rows = []
    for fault in (r.get("faults") or {}).values():
        span = (f" ({num(fault.get('min_s'), '{:.2f}')}-{num(fault.get('max_s'), '{:.2f}')})"
                if fault.get("min_s") is not None else "")
        bound = fault.get("bound_s")
        rows.append(Row(f"fail-over: {fault.get('what')}{wan}",
                        num(fault.get("median_s"), "{:.2f}", " s") + span,
                        num(bound, "≤ {:g} s", " (options' worst case)"),
                        at_most(fault.get("median_s"), bound) if bound else NA,
                        failures=f"{num(fault.get('calls_failed'), '{:d}')} of "
                                 f"{num(fault.get('calls'), '{:d}')} calls failed, "
                                 f"{num(fault.get('runs_failed'), '{:d}')} runs without a "
                                 "mark"))
    return rows


def presence_rows(r: dict[str, Any]) -> list[Row]:
    ours, kam = r.get("ours") or {}, r.get("kamailio") or {}
    load = f"{num(r.get('presentities'))} presentities, {num(r.get('watchers'))} watchers"
    skipped = "; ".join(r.get("failures") or [])

    def lost(step: dict[str, Any]) -> str:
        if not step:
            return "not run"
        return (f"{num(step.get('missing'), '{:,.0f}')} missing, "
                f"{num(step.get('failures'), '{:,.0f}')} failed, "
                f"{num(step.get('log_errors'), '{:,.0f}')} log errors")

    rows = []
    for rate in r.get("rates") or []:
        o = get(ours, "rates", str(rate)) or {}
        k = get(kam, "rates", str(rate)) or {}
        cpu_ratio = r.get(f"cpu_ratio_{rate}")
        rows.append(Row(
            f"status-aggregator vs Kamailio presence: {num(rate)} changes/s offered ({load})",
            num(o.get("achieved_rate"), unit=" changes/s"), NA, NA,
            "; ".join(f for f in (lost(o), skipped) if f),
            num(o.get("cpu_s_per_1000"), "{:.3f}", " per 1,000 deliveries"),
            f"{num(k.get('achieved_rate'), unit=' changes/s')}, CPU "
            f"{num(k.get('cpu_s_per_1000'), '{:.3f}')}; {lost(k)}",
            f"CPU {num(cpu_ratio, '{:.2f}')}" if cpu_ratio is not None
            else "CPU n/a (a side not run or not clean)"))
    rows.append(Row(
        "status-aggregator vs Kamailio presence: memory per presentity / per watcher",
        f"{num(ours.get('rss_bytes_per_presentity'), unit=' B')} / "
        f"{num(ours.get('rss_bytes_per_watcher'), unit=' B')} (RSS)",
        failures=skipped or NA,
        kamailio=f"{num(kam.get('shm_bytes_per_presentity'), unit=' B')} / "
                 f"{num(kam.get('shm_bytes_per_watcher'), unit=' B')} (shared memory)",
        ratio=f"{num(r.get('memory_per_presentity_ratio'), '{:.2f}')} / "
              f"{num(r.get('memory_per_watcher_ratio'), '{:.2f}')}",
        memory=num(ours.get("rss_bytes_per_presentity"), unit=" B/presentity")))
    return rows


def _sipp_failures(side: dict[str, Any]) -> str:
    return (f"{num(side.get('failed_total'), '{:,.0f}')} failed calls, "
            f"{num(side.get('retransmissions'), '{:,.0f}')} retrans (median)")


def prack_rows(r: dict[str, Any]) -> list[Row]:
    plain, rel = r.get("plain") or {}, r.get("100rel") or {}
    load = f"{num(r.get('calls'))} calls at {num(r.get('rate_offered'))}/s offered"
    return [
        Row(f"sip-server calls with an unreliable 180 ({load})",
            num(plain.get("rate"), "{:,.1f}", " calls/s"), NA, NA, _sipp_failures(plain),
            num(plain.get("node_cpu_per_1000"), "{:.3f}")),
        Row(f"sip-server calls with a reliable 183 + PRACK relayed, RFC 3262 ({load})",
            num(rel.get("rate"), "{:,.1f}", " calls/s"), NA, NA, _sipp_failures(rel),
            num(rel.get("node_cpu_per_1000"), "{:.3f}"),
            ratio=num(r.get("node_cpu_ratio_100rel_over_plain"), "{:.2f}",
                      " node CPU 100rel / plain")),
    ]


def node_forward_all_rows(r: dict[str, Any]) -> list[Row]:
    plain, fs = r.get("plain") or {}, r.get("fs") or {}
    load = f"{num(r.get('calls'))} calls at {num(r.get('rate_offered'))}/s offered"
    extra = None
    if isinstance(fs.get("node_cpu_per_1000"), int | float) and \
            isinstance(plain.get("node_cpu_per_1000"), int | float):
        extra = fs["node_cpu_per_1000"] - plain["node_cpu_per_1000"]  # s/1,000 = ms/call
    return [
        Row(f"sip-server calls to an extension, no dial plan ({load})",
            num(plain.get("rate"), "{:,.1f}", " calls/s"), NA, NA, _sipp_failures(plain),
            num(plain.get("node_cpu_per_1000"), "{:.3f}")),
        Row(f"sip-server calls to an extension, forward-all asked of the feature-server ({load})",
            num(fs.get("rate"), "{:,.1f}", " calls/s"), NA, NA, _sipp_failures(fs),
            f"{num(fs.get('node_cpu_per_1000'), '{:.3f}')} node + "
            f"{num(fs.get('fs_cpu_per_1000'), '{:.3f}')} feature-server",
            ratio=f"{num(r.get('node_cpu_ratio_fs_over_plain'), '{:.2f}')} node CPU with "
                  f"look-up / without ({num(extra, '{:+.2f}')} ms per call)"),
    ]


def collective_rows(r: dict[str, Any]) -> list[Row]:
    m = r.get("median") or {}
    users = r.get("users")
    runs = f"{num(r.get('failed_runs'), '{:d}')} of {num(r.get('runs'), '{:d}')} runs failed"
    if r.get("failures"):
        runs += f": {r['failures'][0][:200]}"
    sync = m.get("sync_s")
    indy = m.get("indy_cpu_s")
    # the target is for 200,000 users; a smaller sync says nothing about it
    full_size = isinstance(users, int) and users >= 200_000
    return [
        Row(f"collective: full sync of {num(users)} spanning users to a site that joins",
            num(sync, "{:.1f}", " s") + f" ({num(m.get('sync_users_per_s'), unit=' users/s')})",
            "< 60 s for 200,000 users",
            at_most(sync, 60) if full_size else "n/a (fewer users)", runs,
            num(indy * 1000 / users if isinstance(indy, int | float) and users else None,
                "{:.3f}", " per 1,000 users (joining site)")
            + f"; sending site {num(m.get('boca_cpu_s'), '{:.2f}')} s, hub "
              f"{num(m.get('hub_cpu_s'), '{:.2f}')} s"),
        Row("collective: a user changed at one site until another site's directory shows it, "
            "p50 / p90",
            f"{num(m.get('change_p50_ms'), '{:.1f}')} / {num(m.get('change_p90_ms'), '{:.1f}')} "
            "ms", failures=runs),
        Row("collective: an agent state changed at one site until another site's directory "
            "shows it, p50 / p90",
            f"{num(m.get('status_p50_ms'), '{:.1f}')} / {num(m.get('status_p90_ms'), '{:.1f}')} "
            "ms", "p90 < 1 s", at_most(m.get("status_p90_ms"), 1000), runs),
    ]


def treatments_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for step in r.get("steps") or []:
        p99 = step.get("p99_ms")
        late_pct = percent(step.get("late_share"))
        met = yes_no(p99 < 5 and late_pct < 0.5) \
            if isinstance(p99, int | float) and isinstance(late_pct, int | float) else (
                "**NO**" if step.get("p99_past_histogram") else NA)
        rows.append(Row(
            f"feature-server treatments: {num(step.get('streams'))} music streams at once, "
            "RTP send lateness p99, frames > 10 ms late",
            ("> 20 ms" if step.get("p99_past_histogram") else num(p99, "{:.2f}", " ms"))
            + f", {num(late_pct, '{:.2f}', ' %')} late",
            "< 5 ms, < 0.5 % (the voicemail RTP targets)", met,
            f"{num(step.get('failed'), '{:d}')} failed calls, "
            f"{num(percent(step.get('echoed')), '{:.0f}', ' %')} "
            "echoed back",
            num(step.get("cpu_per_1000"), "{:.4f}", " per 1,000 packets")
            + f" ({num(step.get('core_share'), '{:.2f}')} of a core)"))
    return rows or [Row("feature-server treatments")]


def instructions_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for kind, label in (("register", "REGISTER relayed to the node"),
                        ("invite", "INVITE dialog (INVITE..BYE)")):
        ours = r.get(f"{kind}_instructions_ours")
        before = r.get(f"{kind}_instructions_before")
        ratio = r.get(f"{kind}_ratio")
        failed = [f"{side} {num(r.get(f'{kind}_failed_runs_{side}'), '{:d}')}"
                  for side in ("ours", "before") if f"{kind}_failed_runs_{side}" in r]
        rows.append(Row(
            f"sip-proxy instructions per {label} (callgrind, whole process)",
            num(ours) if ours else "no clean run",
            "no more than before" if ratio is not None else NA,
            at_most(ratio, 1.0) if ratio is not None else NA,
            "runs left out (not clean): " + ", ".join(failed) if failed else NA,
            ratio=f"{num(ratio, '{:.3f}')} ours/before ({num(before)} before)"
            if ratio is not None else "no baseline (--baseline-rev REV)"))
    return rows


def cpu_split_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for kind, label in (("register", "relayed REGISTER"), ("invite", "proxied call")):
        sides = r.get("medians", {}).get(kind)
        if sides is None:
            continue
        ours, kam = sides.get("sip-proxy"), sides.get("kamailio")

        def split(m: dict[str, float] | None) -> str:
            return (f"{m['cpu_s_per_1000']:.3f} CPU s per 1,000 (kernel "
                    f"{m['kernel_s_per_1000']:.3f}, user {m['user_s_per_1000']:.3f})"
                    if m else "no clean run")
        ratio = NA
        if ours and kam and kam["kernel_s_per_1000"] and kam["user_s_per_1000"]:
            ratio = (f"kernel {ours['kernel_s_per_1000'] / kam['kernel_s_per_1000']:.2f}, "
                     f"user {ours['user_s_per_1000'] / kam['user_s_per_1000']:.2f} ours/Kamailio")
        rows.append(Row(f"sip-proxy CPU per {label}, kernel and user (perf samples)",
                        split(ours), kamailio=split(kam), ratio=ratio))
    return rows


def proxy_tls_rows(r: dict[str, Any]) -> list[Row]:
    ratio = r.get("connect_cpu_ratio_tls_over_tcp")
    return [
        Row(f"sip-proxy TLS connection with its handshake vs TCP connect "
            f"({num(r.get('connections'))} per run)",
            num(r.get("tls_connect_cpu_s_per_1000"), "{:.3f}", " CPU s per 1,000"),
            cpu=f"{num(r.get('tls_connect_cpu_s_per_1000'), '{:.3f}')} TLS, "
                f"{num(r.get('tcp_connect_cpu_s_per_1000'), '{:.3f}')} TCP per 1,000 "
                "connections",
            ratio=f"{num(ratio, '{:.1f}')} TLS / TCP" if ratio is not None
            else "TLS / TCP n/a (TCP below the clock tick)"),
        Row(f"sip-proxy OPTIONS answered on one TLS vs one TCP connection "
            f"({num(r.get('requests'))} per run)",
            num(r.get("tls_options_per_s"), unit=" /s")
            + f" (TCP {num(r.get('tcp_options_per_s'), unit=' /s')})",
            failures=num(r.get("failed_answers"), "{:d}", " answers not 200"),
            ratio=num(r.get("options_rate_ratio_tls_over_tcp"), "{:.2f}", " TLS / TCP")),
    ]


def _median_key(results: Any, key: str) -> float | None:
    """The median of ``key`` over a step's clean runs (``bench_rtm`` runs lists)."""
    if not isinstance(results, list):
        return None
    values = [r[key] for r in results if isinstance(r, dict) and not r.get("errors")
              and isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def _failed_runs(results: Any) -> str:
    if not isinstance(results, list):
        return NA
    failed = [r for r in results if not isinstance(r, dict) or r.get("errors")]
    text = f"{len(failed)} of {len(results)} runs failed"
    if failed and isinstance(failed[0], dict):
        text += f": {str(failed[0]['errors'][0])[:120]}"
    return text


def rtm_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    steps = (("throughput", "rate", "rtm-server durable messages per second",
              "{:,.0f}", " msg/s", "cpu_per_1000"),
             ("latency", "p99_ms", "rtm-server delivery latency p99 at 1,000 msg/s",
              "{:.2f}", " ms", None),
             ("memory", "rss_per_message", "rtm-server RSS per queued message",
              "{:,.0f}", " B", None),
             ("takeover", "takeover_s", "rtm-server take-over after SIGKILL of the active",
              "{:.2f}", " s", None))
    for step, key, label, fmt, unit, cpu_key in steps:
        sides = r.get(step)
        if not isinstance(sides, dict):
            continue
        ours = _median_key(sides.get("ours"), key)
        nats = _median_key(sides.get("nats"), key)
        ratio = ours / nats if ours is not None and nats else None
        cpu = NA
        if cpu_key:
            cpu = (f"{num(_median_key(sides.get('ours'), cpu_key), '{:.3f}')} ours, "
                   f"{num(_median_key(sides.get('nats'), cpu_key), '{:.3f}')} NATS")
        rows.append(Row(label, num(ours, fmt, unit),
                        failures=f"ours {_failed_runs(sides.get('ours'))}; "
                                 f"NATS {_failed_runs(sides.get('nats'))}",
                        cpu=cpu, kamailio=f"NATS JetStream {num(nats, fmt, unit)}",
                        ratio=f"{num(ratio, '{:.2f}')} ours/NATS"))
    drain = r.get("drain")
    if isinstance(drain, list):
        seconds = _median_key(drain, "seconds")
        rows.append(Row("rtm-server backlog drained to a returning site",
                        num(seconds, "{:.2f}", " s")
                        + f" ({num(_median_key(drain, 'rate'), unit=' msg/s')})",
                        "< 10 s", at_most(seconds, 10), _failed_runs(drain),
                        num(_median_key(drain, "hub_cpu_per_1000"), "{:.3f}", " hub")))
    drill = r.get("drill")
    if isinstance(drill, dict):
        lost = [drill.get(k) for k in ("missing", "duplicates", "out_of_order_pairs")]
        rows.append(Row("rtm-server drill: messages through two SIGKILLs",
                        f"{num(drill.get('deliveries'))} of {num(drill.get('messages'))} "
                        "delivered", "none missing, twice or out of order",
                        yes_no(all(v == 0 for v in lost)) if all(
                            isinstance(v, int) for v in lost) else NA,
                        f"{num(lost[0], '{:d}')} missing, {num(lost[1], '{:d}')} twice, "
                        f"{num(lost[2], '{:d}')} out of order"))
    return rows or [Row("rtm-server", "no steps run")]


def director_rows(r: dict[str, Any]) -> list[Row]:
    p99 = r.get("decision_p99_ms")
    target = r.get("decision_target_ms")
    rows = [
        Row(f"director routing decision over {num(r.get('agents'))} agents at "
            f"{num(r.get('sites'))} sites, p99",
            num(p99, "{:.4f}", " ms") + f" (p50 {num(r.get('decision_p50_ms'), '{:.4f}')})",
            f"< {num(target, '{:g}')} ms" if target is not None else NA,
            at_most(p99, target) if isinstance(target, int | float) else NA),
        Row(f"director calls routed (reserve then route, {num(r.get('routing_agents'))} agents)",
            num(r.get("routed_calls_per_s"), unit=" calls/s"),
            failures=num(r.get("routed_failed"), "{:d}", " failed"),
            cpu=num(r.get("director_cpu_s_per_1000"), "{:.3f}")),
        Row("director spread: agents' call share max/min by availability",
            num(r.get("spread_share_max_min"), "{:.2f}"),
            failures=f"{num(r.get('spread_no_agent_at_site'))} calls with no free agent at "
                     "their site",
            ratio=f"{num(r.get('spread_share_max_min_round_robin'), '{:.2f}')} round-robin"),
        Row(f"director polling {num(r.get('monitored_sites'))} monitored sites",
            num(r.get("monitored_reports_per_s"), "{:,.1f}", " reports/s"),
            failures=f"{num(r.get('monitored_fresh_at_end'))} fresh at the end",
            cpu=num(r.get("monitored_poll_cpu_s_per_s"), "{:.4f}", " CPU s per s")),
    ]
    if "storm_director_calls_per_s" in r:
        ours = r.get("storm_director_cpu_s_per_1000")
        kam = r.get("storm_kamailio_cpu_s_per_1000")
        rows.append(Row(
            "director call storm into one routing point (SIPp agents, two data centres)",
            num(r.get("storm_director_calls_per_s"), "{:,.1f}", " calls/s"),
            failures=f"{num(r.get('storm_director_failed'), '{:d}')} failed, "
                     f"{num(r.get('storm_director_double_offers'), '{:d}')} double offers",
            cpu=num(ours, "{:.2f}"),
            kamailio=(f"dispatcher {num(r.get('storm_kamailio_calls_per_s'), '{:,.1f}')} "
                      f"calls/s, {num(r.get('storm_kamailio_failed'), '{:d}')} failed, "
                      f"{num(r.get('storm_kamailio_double_offers'), '{:d}')} double offers, "
                      f"CPU {num(kam, '{:.2f}')}")
            if "storm_kamailio_calls_per_s" in r else "not run",
            ratio=f"{num(ours / kam if isinstance(ours, int | float) and kam else None, '{:.2f}')}"
                  " CPU ours/Kamailio"))
    if "convergence_director_ms_p50" in r:
        rows.append(Row("director: an agent state change at its t-controller until the "
                        "director sees it, p50 / max",
                        f"{num(r.get('convergence_director_ms_p50'), '{:.1f}')} / "
                        f"{num(r.get('convergence_director_ms_max'), '{:.1f}')} ms"))
    return rows


def cluster_scale_rows(r: dict[str, Any]) -> list[Row]:
    sizes = r.get("sizes")
    if not isinstance(sizes, dict) or not sizes:
        return [Row("cluster nodes: per-node cost by cluster size", "no sizes run")]
    rows = []
    for size, m in sizes.items():
        if not isinstance(m, dict):
            continue
        ratio = m.get("vs_smallest")
        rows.append(Row(
            f"cluster of {size} nodes, {num(r.get('rate_per_node'))} calls/s per node: "
            "CPU per node (sip-server + t-controller)",
            num(m.get("per_node_cpu_per_1000_mean"), "{:.2f}", " CPU s / 1,000 calls")
            + f" (worst node {num(m.get('per_node_cpu_per_1000_max'), '{:.2f}')})",
            "flat: <= 1.10 x the smallest cluster's",
            at_most(ratio, 1.10) if ratio is not None else NA,
            f"{num(m.get('failed'), '{:d}')} failed calls, "
            f"{num(m.get('events_missing'), '{:d}')} events missing, "
            f"{num(m.get('failed_runs'), '{:d}')} failed runs",
            f"{num(m.get('node_cpu_per_1000_mean'), '{:.2f}')} sip-server + "
            f"{num(m.get('tc_cpu_per_1000_mean'), '{:.2f}')} t-controller",
            ratio=f"{num(ratio, '{:.2f}')} per-node cost / smallest cluster's"))
    return rows


MAPPERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "bench_drill": drill_rows,
    "bench_hostile": hostile_rows,
    "bench_failover": failover_rows,
    "bench_voicemail": voicemail_rows,
    "bench_parser": parser_rows,
    "bench_transaction": transaction_rows,
    "bench_tlib": tlib_rows,
    "bench_node_calls": node_calls_rows,
    "bench_proxy": proxy_rows,
    "bench_tcontroller": tcontroller_rows,
    "bench_mesh": mesh_rows,
    "bench_node_memory": node_memory_rows,
    "bench_security": security_rows,
    "bench_feature_server": feature_server_rows,
    "bench_status": status_rows,
    "bench_presence": presence_rows,
    "bench_prack": prack_rows,
    "bench_node_forward_all": node_forward_all_rows,
    "bench_collective": collective_rows,
    "bench_treatments": treatments_rows,
    "bench_instructions": instructions_rows,
    "bench_cpu_split": cpu_split_rows,
    "bench_proxy_tls": proxy_tls_rows,
    "bench_rtm": rtm_rows,
    "bench_director": director_rows,
    "bench_cluster_scale": cluster_scale_rows,
}


def rows_for(name: str, figures: Any, exit_code: int | None = 0) -> list[Row]:
    """Rows for one script; never raises (an unexpected shape gives one n/a row)."""
    status = "" if not exit_code else f" (exit {exit_code})"
    if not isinstance(figures, dict):
        if name == "bench_tlib" and not exit_code:
            return tlib_rows({})
        return [Row(f"{name}{status}", "no RESULT line")]
    mapper = MAPPERS.get(name)
    if mapper is None:
        return [Row(f"{name}{status}", "no summary mapping; see its table")]
    try:
        rows = mapper(figures)
    except Exception as exc:  # the report must survive a changed JSON shape
        return [Row(f"{name}{status}", f"n/a ({type(exc).__name__}: {exc})")]
    if status:
        for row in rows:
            row.what += status
    return rows


def markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell(c) for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)
