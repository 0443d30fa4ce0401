"""SIPVicious against a sip-proxy in front of a cluster node (docs/sip-proxy.md, Security).

A sip-server node (127.0.31.20) and a sip-proxy (127.0.31.10) run as
processes from a generated cluster file; extensions 1003, 1007, 1011 and 1016
exist (plus 1050, the account of a well-behaved phone). Then, each bounded
in time:

* **enumeration** -- ``svwar`` (REGISTER and OPTIONS methods, extensions
  1000-1020) from 127.0.32.66: which extensions does it report, against the
  ones that exist? Beside it our own probe sends one REGISTER and one OPTIONS
  per extension and compares the answers (status, header names, challenge
  parameters without the nonce): the answer must not depend on existence.
* **password guessing** -- first a control run (``svcrack`` with a
  three-word dictionary holding the right password, from 127.0.32.68: it must
  crack it, which shows the tool works against us); then the attack from
  127.0.32.67 on extension 1007 with a 40-word dictionary whose right password
  is word 30. Guesses per second are measured on the attacker's socket (each
  REGISTER carrying Authorization, and the answer it got) in three phases:
  answered at once, answered late (slowed down), refused with 403 (blocked).
* **another source** -- during both attacks a phone on 127.0.31.77 sends an
  OPTIONS every 0.2 s and an authenticated REGISTER every second; the round
  trips and the unanswered requests are printed per phase, with a quiet phase
  before the attacks as the baseline.

SIPVicious is the Debian package ``sipvicious`` (commands ``svwar`` and
``svcrack``). Its ``-b`` (bind address) is not passed to the socket in the
packaged 0.3.3, so the tools run under a small shim that binds them to the
attacker's address and logs what they send and receive.

    .venv/bin/python bench/bench_security.py [--runs 1] [--attack-seconds 45]

Prints a table; the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocols.sip.digest import DigestClient  # noqa: E402
from protocols.sip.message import Response, parse_message  # noqa: E402

PROXY, NODE = "127.0.31.10", "127.0.31.20"
SCANNER, CRACKER, CONTROL, PROBE = "127.0.32.66", "127.0.32.67", "127.0.32.68", "127.0.32.69"
BYSTANDER = "127.0.31.77"
DOMAIN = "cluster.lab"
EXISTING = {"1003": "Kx7-1003-pw", "1007": "Kx7-1007-pw", "1011": "Kx7-1011-pw",
            "1016": "Kx7-1016-pw"}
PHONE_DN, PHONE_PW = "1050", "Kx7-1050-pw"
SCAN_RANGE = range(1000, 1021)
#: An answer later than this after its guess counts as slowed down.
SLOW_ANSWER = 0.25

#: Runs a SIPVicious tool bound to one address, logging its datagrams as JSON lines.
SHIM = r"""
import json, os, runpy, socket, sys, time
bind_ip, log_path, tool = sys.argv[1:4]
sys.argv = [tool] + sys.argv[4:]
sys.path.insert(0, os.path.dirname(tool))
log = open(log_path, "a")
_bind, _sendto, _recvfrom = socket.socket.bind, socket.socket.sendto, socket.socket.recvfrom
def first(data):
    return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
def bind(self, addr):
    if addr[0] in ("", "0.0.0.0"):
        addr = (bind_ip, addr[1])
    return _bind(self, addr)
def sendto(self, data, *rest):
    auth = b"\nauthorization:" in data.lower()
    log.write(json.dumps(["tx", time.time(), first(data), auth]) + "\n"); log.flush()
    return _sendto(self, data, *rest)
def recvfrom(self, *rest):
    data, addr = _recvfrom(self, *rest)
    log.write(json.dumps(["rx", time.time(), first(data), False]) + "\n"); log.flush()
    return data, addr
socket.socket.bind, socket.socket.sendto, socket.socket.recvfrom = bind, sendto, recvfrom
runpy.run_path(tool, run_name="__main__")
"""


def free_port(host: str) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def write_cluster(path: Path, ports: dict[str, int]) -> None:
    dns = "".join(f'\n[dns.{dn}]\ntype = "Extension"\ncontact = "*"\npassword = "{pw}"\n'
                  for dn, pw in {**EXISTING, PHONE_DN: PHONE_PW}.items())
    path.write_text(f"""
[switch]
name = "SIP_Cluster"
domain = "{DOMAIN}"

[dns.SIP_Cluster_DN]
type = "VoIPService"
service-type = "sip-cluster-nodes"
applications = ["SIPS_1"]
siproxy-applications = ["SPX_1"]
{dns}
[applications.SIPS_1]
kind = "sip-server"
host = "{NODE}"
geo-location = "dc1"
sip-port = {ports['node_sip']}
default-port = {ports['node_default']}
http-port = {ports['node_http']}

[applications.TC_1]
kind = "t-controller"
host = "{NODE}"
sip-server = "SIPS_1"
tc-port = {ports['tc']}

[applications.SPX_1]
kind = "sip-proxy"
host = "{PROXY}"
geo-location = "dc1"
sip-port = {ports['proxy_sip']}
replication-port = {ports['proxy_repl']}
http-port = {ports['proxy_http']}

[applications.SPX_1.sipproxy]
oos-check = 1
oos-force = 1
""")


def http_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{PROXY}:{port}{path}", timeout=2) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------- a SIP client


class Phone:
    """A tiny UDP UAC on one source address: OPTIONS and (authenticated) REGISTER."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.target = target
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, ruri: str, user: str, extra: str = "",
                call_id: str | None = None, cseq: int = 1,
                timeout: float = 2.0) -> tuple[Response | None, float]:
        """Send one request, wait for its final answer: (answer or None, seconds)."""
        self.seq += 1
        branch = f"z9hG4bK-bench-{self.seq}-{time.time_ns()}"
        call_id = call_id or f"bench-{self.seq}-{time.time_ns()}@{self.host}"
        msg = (f"{method} {ruri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=t{self.seq}\r\n"
               f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
               f"Contact: <sip:{user}@{self.host}:{self.port}>\r\n{extra}"
               "Content-Length: 0\r\n\r\n").encode()
        started = time.monotonic()
        self.sock.sendto(msg, self.target)
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, timeout
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return None, timeout
            try:
                answer = parse_message(data)
            except ValueError:
                continue
            if not isinstance(answer, Response) or branch not in str(answer.top_via):
                continue
            if answer.status >= 200:
                return answer, time.monotonic() - started

    def register(self, user: str, password: str, expires: int = 60) -> tuple[int, float]:
        """REGISTER with digest: (final status or 0, seconds for both legs)."""
        call_id = f"bench-reg-{time.time_ns()}@{self.host}"
        ruri = f"sip:{DOMAIN}"
        answer, t1 = self.request("REGISTER", ruri, user, f"Expires: {expires}\r\n",
                                  call_id=call_id, cseq=1)
        if answer is None:
            return 0, t1
        if answer.status != 401:
            return answer.status, t1
        client = DigestClient(user, password=password)
        creds = client.authorize(answer.headers.get_all("WWW-Authenticate"),
                                 method="REGISTER", uri=ruri)
        answer2, t2 = self.request("REGISTER", ruri, user,
                                   f"Expires: {expires}\r\nAuthorization: {creds}\r\n",
                                   call_id=call_id, cseq=2)
        return (answer2.status if answer2 else 0), t1 + t2


class Bystander(threading.Thread):
    """A phone on another address: OPTIONS every 0.2 s, REGISTER every second."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.phone = Phone(BYSTANDER, target)
        self.phase = "quiet"
        self.samples: list[tuple[str, str, int, float]] = []  # phase, method, status, s
        self.stop_flag = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self.stop_flag.is_set():
            phase = self.phase
            answer, secs = self.phone.request("OPTIONS", f"sip:{PROXY}:{self.phone.target[1]}",
                                              PHONE_DN)
            self.samples.append((phase, "OPTIONS", answer.status if answer else 0, secs))
            if tick % 5 == 0:
                status, secs = self.phone.register(PHONE_DN, PHONE_PW)
                self.samples.append((phase, "REGISTER", status, secs))
            tick += 1
            self.stop_flag.wait(0.2)
        self.phone.close()

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for phase in dict.fromkeys(p for p, *_ in self.samples):
            for method, ok in (("OPTIONS", 200), ("REGISTER", 200)):
                rows = [(st, s) for p, m, st, s in self.samples if p == phase and m == method]
                if not rows:
                    continue
                answered = [s for st, s in rows if st]
                out[f"{phase}/{method}"] = {
                    "sent": len(rows), "ok": sum(1 for st, _ in rows if st == ok),
                    "unanswered": len(rows) - len(answered),
                    "median_ms": round(1000 * statistics.median(answered), 2) if answered
                    else None,
                    "max_ms": round(1000 * max(answered), 2) if answered else None}
        return out


# --------------------------------------------------------------------------- the tools


def run_tool(tool: str, bind_ip: str, args: list[str], log: Path, timeout: float,
             until_answered: bool = False) -> tuple[str, float, bool]:
    """Run svwar/svcrack bound to ``bind_ip``; (output, seconds, killed at the timeout).

    ``until_answered``: stop the tool as soon as its guess (a request with
    Authorization) has had its final answer -- svcrack would otherwise wait
    for more answers before it exits.
    """
    found = shutil.which(tool)
    assert found is not None
    path = os.path.realpath(found)  # the entry script finds its package beside it
    started = time.monotonic()
    offset = log.stat().st_size if log.exists() else 0
    out_file = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(["/usr/bin/python3", "-c", SHIM, bind_ip, str(log), path, *args],
                            stdout=out_file, stderr=subprocess.STDOUT, text=True)
    killed = False
    while proc.poll() is None:
        if time.monotonic() - started > timeout:
            killed = True
            break
        if until_answered and log.exists():
            with log.open() as f:
                f.seek(offset)
                guessed = answered = False
                for line in f:
                    kind, _, first, auth = json.loads(line)
                    if kind == "tx" and auth:
                        guessed = True
                    elif guessed and kind == "rx" and not first.startswith("SIP/2.0 1"):
                        answered = True
            if answered:
                time.sleep(0.05)  # let it print a cracked password
                break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    out_file.seek(0)
    out = out_file.read()
    out_file.close()
    return out, time.monotonic() - started, killed


def svwar(method: str, target: tuple[str, int], work: Path, force: bool) -> dict[str, Any]:
    log = work / f"svwar-{method}-{force}.jsonl"
    args = ["-e", f"{SCAN_RANGE.start}-{SCAN_RANGE.stop - 1}", "-m", method,
            "-P", str(free_port(SCANNER)), "--maximumtime", "5", "--domain", DOMAIN,
            *(["--force"] if force else []), f"udp://{target[0]}:{target[1]}"]
    out, secs, killed = run_tool("svwar", SCANNER, args, log, 60)
    found = {m.group(1): m.group(2) for m in
             re.finditer(r"^\|\s*(\d+)\s*\|\s*([\w ]+?)\s*\|", out, re.M)}
    refused_to_scan = "authentication request for an unknown extension" in out
    return {"method": method, "force": force, "found": found, "seconds": round(secs, 1),
            "killed_at_timeout": killed, "refused_to_scan": refused_to_scan,
            "requests": sum(1 for line in log.open() if line.startswith('["tx"'))
            if log.exists() else 0,
            "tail": out.strip().splitlines()[-3:]}


def probe_signatures(target: tuple[str, int]) -> dict[str, Any]:
    """One REGISTER and one OPTIONS per extension; the answers' shape per extension."""
    phone = Phone(PROBE, target)
    per_method: dict[str, dict[str, str]] = {}
    try:
        for method in ("REGISTER", "OPTIONS"):
            sigs: dict[str, str] = {}
            for ext in SCAN_RANGE:
                user = str(ext)
                ruri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{user}@{DOMAIN}"
                answer, _ = phone.request(method, ruri, user)
                if answer is None:
                    sigs[user] = "no answer"
                    continue
                names = sorted({n.lower() for n, _ in answer.headers.items()})
                challenge = ";".join(
                    re.sub(r'nonce="[^"]*"', 'nonce=*', v)
                    for v in answer.headers.get_all("WWW-Authenticate"))
                sigs[user] = f"{answer.status} {answer.reason} | {','.join(names)} | {challenge}"
            per_method[method] = sigs
    finally:
        phone.close()
    out: dict[str, Any] = {}
    for method, sigs in per_method.items():
        if "no answer" in sigs.values():
            sigs = {d: f"{v} ({d})" for d, v in sigs.items()}  # unanswered proves nothing
        exist = {sigs[d] for d in sigs if d in EXISTING}
        absent = {sigs[d] for d in sigs if d not in EXISTING}
        out[method] = {"distinct_answers": len(set(sigs.values())),
                       "same_for_existing_and_not": exist == absent and len(exist) == 1,
                       "answers": sorted(set(sigs.values()))}
    return out


def guess_phases(log: Path) -> dict[str, Any]:
    """Guesses (REGISTERs with Authorization) on the attacker's socket, by answer."""
    events = [json.loads(line) for line in log.open()] if log.exists() else []
    guesses: list[tuple[float, str, float]] = []  # sent at, answer, answer delay
    pending: list[float] = []
    unauth = 0
    for kind, at, first, auth in events:
        if kind == "tx":
            if auth:
                pending.append(at)
            else:
                unauth += 1
        elif pending and not first.startswith("SIP/2.0 1"):
            # answers to guesses come back in order; an answer to an unauthenticated
            # REGISTER is a 401 too, so match the oldest guess only when no newer
            # send could be the one answered
            sent = pending.pop(0)
            guesses.append((sent, first, at - sent))
    phases: dict[str, list[float]] = {"fast": [], "slowed": [], "blocked": [], "other": []}
    for sent, first, delay in guesses:
        if first.startswith("SIP/2.0 403"):
            phases["blocked"].append(sent)
        elif first.startswith("SIP/2.0 401") or first.startswith("SIP/2.0 407"):
            phases["slowed" if delay >= SLOW_ANSWER else "fast"].append(sent)
        else:
            phases["other"].append(sent)
    out: dict[str, Any] = {"guesses": len(guesses) + len(pending), "unanswered": len(pending),
                           "unauthenticated_requests": unauth}
    for name, times in phases.items():
        span = (max(times) - min(times)) if len(times) > 1 else 0.0
        out[name] = {"guesses": len(times),
                     "per_s": round((len(times) - 1) / span, 2) if span > 0 else None,
                     "seconds": round(span, 2)}
    out["answers"] = sorted({first.split(" ", 2)[1] for _, first, _ in guesses
                             if first.startswith("SIP/2.0")})
    return out


def svcrack(user: str, words: list[str], bind_ip: str, target: tuple[str, int], work: Path,
            timeout: float, tag: str) -> dict[str, Any]:
    """One ``svcrack`` per word, one after the other, until cracked or ``timeout``.

    svcrack 0.3.3 keeps one nonce-count across fresh nonces (its second guess
    sends nc=00000002 on a nonce never used), which the node answers as a stale
    nonce without checking the password, and its ``-n`` crashes; one process
    per word makes every guess a real one.
    """
    log = work / f"svcrack-{tag}.jsonl"
    started = time.monotonic()
    cracked: dict[str, str] = {}
    tail: list[str] = []
    tried = 0
    killed = False
    for i, word in enumerate(words):
        left = timeout - (time.monotonic() - started)
        if left <= 1:
            killed = True
            break
        dictionary = work / f"dict-{tag}-{i}.txt"
        dictionary.write_text(word + "\n")
        args = ["-u", user, "-d", str(dictionary), "-P", str(free_port(bind_ip)),
                "--maximumtime", "5", "--domain", DOMAIN, f"udp://{target[0]}:{target[1]}"]
        out, _, killed = run_tool("svcrack", bind_ip, args, log, min(left, 15),
                                 until_answered=True)
        tried += 1
        tail = out.strip().splitlines()[-3:]
        cracked.update(re.findall(r"^\|\s*(\d+)\s*\|\s*(\S+)\s*\|", out, re.M))
        if cracked or killed:
            break
    return {"user": user, "dictionary_words": len(words), "words_tried": tried,
            "cracked": cracked, "seconds": round(time.monotonic() - started, 1),
            "killed_at_timeout": killed, **guess_phases(log), "tail": tail}


# --------------------------------------------------------------------------- the run


def wait_ready(http_port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("sip-proxy exited")
        with contextlib.suppress(OSError, ValueError):
            nodes = http_json(http_port, "/status/nodes")["nodes"]
            if all(n.get("usable") for n in nodes.values()):
                return
        time.sleep(0.2)
    raise RuntimeError("sip-proxy did not see its node in service")


def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ports = {"node_sip": free_port(NODE), "node_default": free_port(NODE),
             "node_http": free_port(NODE), "tc": free_port(NODE),
             "proxy_sip": free_port(PROXY), "proxy_repl": free_port(PROXY),
             "proxy_http": free_port(PROXY)}
    config = work / "cluster.toml"
    write_cluster(config, ports)
    common = ["--config", str(config), "--log-level", "warning", "--log-format", "json"]
    node = subprocess.Popen([sys.executable, "-m", "daemons.cli", "sip-server", *common,
                             "--name", "SIPS_1"], cwd=ROOT, stdout=open(work / "node.log", "wb"),
                            stderr=subprocess.STDOUT)
    proxy = subprocess.Popen([sys.executable, "-m", "daemons.cli", "sip-proxy", *common,
                              "--name", "SPX_1", "--rate-limit", str(args.rate_limit),
                              "--rate-burst", str(args.rate_burst),
                              "--auth-slow-after", str(args.auth_slow_after),
                              "--auth-block-after", str(args.auth_block_after),
                              "--auth-block-seconds", str(args.auth_block_seconds)],
                             cwd=ROOT, stdout=open(work / "proxy.log", "wb"),
                             stderr=subprocess.STDOUT)
    target = (PROXY, ports["proxy_sip"])
    bystander = Bystander(target)
    result: dict[str, Any] = {}
    try:
        wait_ready(ports["proxy_http"], proxy)
        bystander.start()
        time.sleep(3)  # baseline: the quiet phase
        bystander.phase = "svwar"
        result["probe"] = probe_signatures(target)
        result["svwar"] = [svwar("REGISTER", target, work, force=False),
                           svwar("REGISTER", target, work, force=True),
                           svwar("OPTIONS", target, work, force=True)]
        bystander.phase = "svcrack"
        right = EXISTING["1003"]
        result["control"] = svcrack("1003", ["wrong-1", "wrong-2", right], CONTROL, target,
                                    work, 30, "control")
        words = [f"guess-{i:02d}" for i in range(1, 41)]
        words[29] = EXISTING["1007"]
        result["attack"] = svcrack("1007", words, CRACKER, target, work,
                                   args.attack_seconds, "attack")
        with contextlib.suppress(OSError, ValueError):
            result["proxy_security"] = http_json(ports["proxy_http"], "/status/security")
        bystander.phase = "after"
        time.sleep(2)
    finally:
        bystander.stop_flag.set()
        bystander.join(5)
        for p in (proxy, node):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    result["bystander"] = bystander.summary()
    return result


def summarise(run: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    in_range = sorted(d for d in EXISTING if int(d) in SCAN_RANGE)
    rows = ["| check | result | target | met? |", "|---|---|---|---|"]
    leaks = []
    for sv in run["svwar"]:
        found = sorted(sv["found"])
        leak = bool(set(found) & set(in_range)) and set(found) != {str(e) for e in SCAN_RANGE}
        leaks.append(leak)
        if sv["requests"] == 0:
            leak = True  # the scan did not run: nothing shown
        how = "refused to scan (401 for a random name)" if sv["refused_to_scan"] else \
            f"reported {found or 'nothing'}"
        rows.append(f"| svwar -m {sv['method']}{' --force' if sv['force'] else ''} "
                    f"{SCAN_RANGE.start}-{SCAN_RANGE.stop - 1} ({sv['requests']} requests, "
                    f"{sv['seconds']} s) | {how}; exist: {in_range} | tells nothing | "
                    f"{'NO' if leak else 'yes'} |")
    for method, p in run["probe"].items():
        rows.append(f"| own probe, {method} per extension | {p['distinct_answers']} distinct "
                    f"answer shape(s); same for existing and not: "
                    f"{'yes' if p['same_for_existing_and_not'] else 'NO'} | same | "
                    f"{'yes' if p['same_for_existing_and_not'] else 'NO'} |")
    ctl, att = run["control"], run["attack"]
    rows.append(f"| svcrack control (right password 3rd of 3) | cracked: {ctl['cracked'] or 'no'}"
                f" | cracked (tool works) | {'yes' if ctl['cracked'] else 'NO'} |")
    fast, slowed, blocked = att["fast"], att["slowed"], att["blocked"]
    rows.append(f"| svcrack attack on 1007 (right password word 30 of 40), "
                f"{att['seconds']} s | cracked: {att['cracked'] or 'no'}; "
                f"{att['words_tried']} words tried, {att['guesses']} guesses | not cracked | "
                f"{'NO' if att['cracked'] else 'yes'} |")
    rows.append(f"| guesses/s answered at once | {fast['per_s']} ({fast['guesses']} guesses) "
                f"| | |")
    slower = slowed["guesses"] and (fast["per_s"] or 0) > (slowed["per_s"] or 0)
    rows.append(f"| guesses/s while slowed (answer >= {SLOW_ANSWER} s) | {slowed['per_s']} "
                f"({slowed['guesses']} guesses) | lower | {'yes' if slower else 'n/a'} |")
    rows.append(f"| guesses answered 403 (blocked; then svcrack gets 403 to its unauthenticated "
                f"REGISTER, no challenge, so no further guess) | {blocked['guesses']} | "
                f"blocked | see next row |")
    blocked_sources = run.get("proxy_security", {}).get("blocked_sources")
    is_blocked = bool(blocked_sources) and CRACKER in blocked_sources
    rows.append(f"| proxy /status/security blocked sources | {blocked_sources} | "
                f"{CRACKER} | {'yes' if is_blocked else 'NO'} |")
    served = True
    for key, s in run["bystander"].items():
        ok = s["unanswered"] == 0 and s["ok"] == s["sent"]
        served = served and ok
        rows.append(f"| other source {BYSTANDER}, {key} | {s['ok']}/{s['sent']} ok, "
                    f"{s['unanswered']} unanswered, median {s['median_ms']} ms, max "
                    f"{s['max_ms']} ms | all served | {'yes' if ok else 'NO'} |")
    fields = {
        "existing_in_range": in_range,
        "svwar": [{k: sv[k] for k in ("method", "force", "found", "refused_to_scan",
                                       "requests", "seconds")} for sv in run["svwar"]],
        "enumeration_leak": any(leaks) or not all(
            p["same_for_existing_and_not"] for p in run["probe"].values()),
        "probe": {m: {k: v for k, v in p.items() if k != "answers"}
                  for m, p in run["probe"].items()},
        "control_cracked": bool(ctl["cracked"]),
        "attack_cracked": bool(att["cracked"]),
        "attack": {k: att[k] for k in ("guesses", "words_tried", "fast", "slowed", "blocked",
                                        "other", "unanswered", "unauthenticated_requests",
                                        "answers", "seconds")},
        "guesses_per_s_before_slowdown": fast["per_s"],
        "guesses_per_s_slowed": slowed["per_s"],
        "guesses_per_s_blocked": blocked["per_s"],
        "blocked_sources": blocked_sources,
        "bystander": run["bystander"],
        "bystander_served": served,
    }
    return rows, fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack-seconds", type=float, default=45.0,
                        help="svcrack is stopped after this (bounded below 60)")
    parser.add_argument("--rate-limit", type=float, default=200.0)
    parser.add_argument("--rate-burst", type=float, default=400.0)
    parser.add_argument("--auth-slow-after", type=int, default=3)
    parser.add_argument("--auth-block-after", type=int, default=10)
    parser.add_argument("--auth-block-seconds", type=float, default=60.0)
    args = parser.parse_args()
    args.attack_seconds = min(args.attack_seconds, 59.0)
    missing = [t for t in ("svwar", "svcrack") if shutil.which(t) is None]
    if missing:
        print(f"{', '.join(missing)} not installed (apt-get install -y sipvicious)")
        print("RESULT " + json.dumps({"error": "sipvicious not installed"}))
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-security-"))
    run = one_run(args, work)
    rows, fields = summarise(run)
    print(f"sip-proxy --rate-limit {args.rate_limit:g} --auth-slow-after {args.auth_slow_after} "
          f"--auth-block-after {args.auth_block_after} --auth-block-seconds "
          f"{args.auth_block_seconds:g}; SIPVicious {SCANNER}/{CRACKER}, phone {BYSTANDER}\n")
    print("\n".join(rows))
    print(f"\nsvcrack attack answers seen: {run['attack']['answers']}; unauthenticated "
          f"REGISTERs sent by svcrack: {run['attack']['unauthenticated_requests']}")
    fields["settings"] = {k: getattr(args, k) for k in (
        "rate_limit", "auth_slow_after", "auth_block_after", "auth_block_seconds")}
    fields["targets_met"] = (not fields["enumeration_leak"] and fields["control_cracked"]
                             and not fields["attack_cracked"] and fields["bystander_served"])
    print("RESULT " + json.dumps(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
