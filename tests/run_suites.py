"""Run the test suites side by side, as many at once as the host has cores.

    python tests/run_suites.py [--jobs N] [SUITE ...]

``make test`` calls this. The suites are groups of test directories that
share nothing on the network: the ones that start the lab on its default
addresses (127.0.1.x / 127.0.2.x: the README walk and the lab tests) are one
suite and run one after the other; every other directory uses loopback
subnets of its own, so its suite can run beside them. Each suite is one
pytest process writing ``build/test-SUITE.log`` and ``build/junit-SUITE.xml``;
longest first, so the slowest suite starts at once. A suite's log is printed
when it ends (the last lines only when it passed); the exit status is 1 when
any suite failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"


@dataclass
class Suite:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: suites that must have ended first (they use the same subnets)
    after: tuple[str, ...] = ()


#: longest first (the order they start in); every test directory is in exactly one
SUITES = [
    Suite("lab", ["tests/readme", "tests/daemons/lab", "tests/interop"]),
    Suite("daemons", ["tests/daemons", "--ignore=tests/daemons/lab"]),
    Suite("cluster", ["tests/integration", "tests/protocols", "tests/deploy"]),
    # the SIP stack, the runtime's transport and the sip-proxy's core from their pure
    # Python sources (the fallback without a C compiler); their tests use the daemons
    # suite's subnets
    Suite("pure-python", ["tests/protocols/sip", "tests/daemons/sip_proxy",
                          "tests/daemons/runtime", "tests/daemons/test_sip_transport.py"],
          {"SIPCLUSTER_PURE_PYTHON": "1"}, after=("daemons",)),
]


def _start(suite: Suite) -> tuple[subprocess.Popen[bytes], Path, float]:
    log = BUILD / f"test-{suite.name}.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--durations=15",
           f"--junitxml={BUILD / f'junit-{suite.name}.xml'}", *suite.args]
    out = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **suite.env})
    out.close()
    print(f"[{suite.name}] started: {' '.join(cmd[3:])}", flush=True)
    return proc, log, time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=max(2, os.cpu_count() or 1),
                        help="suites at once (default: the cores, at least 2)")
    parser.add_argument("suites", nargs="*", help="only these suites")
    args = parser.parse_args()
    known = {s.name: s for s in SUITES}
    unknown = [n for n in args.suites if n not in known]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(known)}")
    todo = [known[n] for n in args.suites] if args.suites else list(SUITES)
    BUILD.mkdir(exist_ok=True)
    running: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    results: dict[str, tuple[int, float]] = {}
    started = time.monotonic()
    while todo or running:
        while len(running) < args.jobs:
            ready = [s for s in todo
                     if not any(a in running or any(a == t.name for t in todo)
                                for a in s.after)]
            if not ready:
                break
            todo.remove(ready[0])
            running[ready[0].name] = _start(ready[0])
        time.sleep(0.5)
        for name, (proc, log, t0) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[name]
            elapsed = time.monotonic() - t0
            results[name] = (code, elapsed)
            text = log.read_text(errors="replace")
            shown = text if code else "\n".join(text.splitlines()[-25:])
            print(f"\n[{name}] {'passed' if code == 0 else f'FAILED (exit {code})'} "
                  f"in {elapsed:.0f} s; log {log.relative_to(ROOT)}\n{shown}", flush=True)
    total = time.monotonic() - started
    print("\nsuites: " + ", ".join(
        f"{n} {'ok' if c == 0 else 'FAILED'} {t:.0f} s" for n, (c, t) in results.items())
        + f"; {total:.0f} s in all", flush=True)
    return 1 if any(code for code, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
