"""The emulated WAN (daemons/lab/wan.py): a network namespace of the test's own in
which packets between two /24s pass through the TUN relay, delayed and lost;
packets within a /24 do not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemons.lab.wan import Wan, WanError

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or shutil.which("ip") is None
                                  or not os.path.exists("/dev/net/tun")),
    reason="needs root, iproute2 and /dev/net/tun (required in CI)")

A, B = "10.201.0.", "10.202.0."

#: run inside the namespace: one TCP connection and 200 UDP datagrams from A to
#: B, 20 within A; prints what arrived and how long the first datagram took
PROBE = """
import json, socket, sys, time
a, b = sys.argv[1], sys.argv[2]
out = {}
srv = socket.socket(); srv.bind((b + "7", 0)); srv.listen()
cli = socket.socket(); cli.bind((a + "5", 0))
t = time.monotonic(); cli.connect(srv.getsockname()); out["connect"] = time.monotonic() - t
conn, _ = srv.accept(); cli.sendall(b"x" * 100000); cli.close()
got = 0
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    got += len(chunk)
out["tcp_bytes"] = got
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind((b + "7", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); tx.bind((a + "5", 0))
rx.settimeout(0.5)
for attempt in range(40):  # the first that arrives: one way's delay
    t = time.monotonic(); tx.sendto(b"first", rx.getsockname())
    try:
        rx.recv(100)
    except TimeoutError:
        continue
    out["udp_one_way"] = time.monotonic() - t
    break
rx.settimeout(3.0)
for i in range(200):
    tx.sendto(b"%d" % i, rx.getsockname())
seen = set()
try:
    while len(seen) < 200:
        data = rx.recv(100)
        if data.isdigit():
            seen.add(int(data))
except TimeoutError:
    pass
out["udp_received"] = len(seen)
local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); local.bind((a + "6", 0))
local.settimeout(3.0)
for i in range(20):
    tx.sendto(b"l", local.getsockname())
out["local_received"] = sum(1 for _ in range(20) if local.recv(10))
print(json.dumps(out))
"""


@pytest.fixture
def make_wan(tmp_path: Path) -> Iterator[object]:
    made: list[Wan] = []

    def make(delay_ms: float, loss: float) -> Wan:
        wan = Wan(f"sipcluster-wan-test-{os.getpid()}-{len(made)}", A + "0/24", B + "0/24",
                  delay_ms, loss, tmp_path / f"wan{len(made)}.json")
        made.append(wan)
        wan.create(tmp_path / "wan.log")
        return wan

    yield make
    for wan in made:
        wan.delete()


def probe(wan: Wan) -> dict[str, float]:
    done = subprocess.run([*wan.exec_prefix(), sys.executable, "-c", PROBE, A, B],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def relay_counters(wan: Wan) -> dict[str, int]:
    wan.delete()  # the relay writes its last counters as it stops
    return {k: int(v) for k, v in json.loads(wan.state.read_text()).items()
            if k in ("delayed", "dropped", "write_errors")}


def test_packets_between_the_data_centres_are_delayed_both_ways(make_wan) -> None:
    wan = make_wan(60, 0)
    out = probe(wan)
    # a delay the relay adds cannot be beaten: a TCP handshake is a round trip
    # (SYN one way, SYN-ACK back), a datagram one way
    assert out["connect"] >= 0.12
    assert out["udp_one_way"] >= 0.06
    assert out["tcp_bytes"] == 100000
    assert out["udp_received"] == 200 and out["local_received"] == 20
    counters = relay_counters(wan)
    assert counters["dropped"] == 0 and counters["write_errors"] == 0
    # only what crossed between the /24s went through the relay: the TCP
    # connection (both ways) and 201 datagrams, never the 20 within A
    assert 201 + 4 <= counters["delayed"] < 201 + 4 + 400


def test_loss_drops_packets_and_tcp_recovers(make_wan) -> None:
    wan = make_wan(5, 10)
    out = probe(wan)
    assert out["tcp_bytes"] == 100000  # retransmitted through the loss
    assert 0 < out["udp_received"] < 200
    assert out["local_received"] == 20  # within a data centre nothing is lost
    counters = relay_counters(wan)
    assert counters["dropped"] > 0
    assert counters["write_errors"] == 0


def test_a_namespace_that_cannot_be_made_says_why(tmp_path: Path) -> None:
    wan = Wan("bad name/with slash", A + "0/24", B + "0/24", 40, 1, tmp_path / "w.json")
    with pytest.raises(WanError):
        wan.create(tmp_path / "wan.log")
    with pytest.raises(WanError, match="loss"):
        Wan("sipcluster-wan-x", A + "0/24", B + "0/24", 40, 100,
            tmp_path / "w.json").create(tmp_path / "wan.log")


def test_the_relay_refuses_bad_settings() -> None:
    done = subprocess.run([sys.executable, "-m", "daemons.lab.wan", "relay", "--loss", "120"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert done.returncode == 2 and "--loss" in done.stderr
