"""The ``sipcluster`` command: a reader that closes the pipe early (``| head -1``)
ends it quietly, without a BrokenPipeError traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "etc" / "cluster.toml"
SIPCLUSTER = [sys.executable, "-m", "daemons.cli"]
SIGPIPE_STATUS = 141  # 128 + SIGPIPE, what a shell reports for a writer ended by SIGPIPE


def _large_cluster(path: Path, extra: int = 3000) -> Path:
    """The example cluster file with ``extra`` more SIP Proxies, all with long
    names: ``lab status`` then prints far more than a pipe holds (64 KiB)."""
    names = [f"SIPProxy_dc1_with_a_rather_long_application_name_{i:04d}" for i in range(extra)]
    text = EXAMPLE.read_text().replace(
        "siproxy-applications = [", "siproxy-applications = ["
        + "".join(f'"{n}", ' for n in names), 1)
    text += "".join(
        f'\n[applications.{n}]\nkind = "sip-proxy"\nhost = "127.0.1.21"\n'
        f'geo-location = "dc1"\nsip-port = {20000 + i}\nreplication-port = {40000 + i}\n'
        for i, n in enumerate(names))
    path.write_text(text)
    return path


def test_status_into_head_ends_quietly(tmp_path: Path) -> None:
    """``sipcluster lab status | head -1`` with more output than head reads:
    head gets its line, the command ends without a word on stderr. (``lab
    status`` only reads the lab directory: nothing is started.)"""
    head = shutil.which("head")
    assert head is not None
    config = _large_cluster(tmp_path / "cluster.toml")
    status = subprocess.Popen(
        [*SIPCLUSTER, "lab", "status", "--dir", str(tmp_path / "lab"), "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert status.stdout is not None
    first = subprocess.run([head, "-n", "1"], stdin=status.stdout, capture_output=True,
                           timeout=60, check=True)
    status.stdout.close()  # as the shell does: only head reads the pipe
    _, err = status.communicate(timeout=60)
    assert first.stdout.decode().split() == ["GeoDNS", "stopped"]
    assert err.decode() == ""
    assert status.returncode == SIGPIPE_STATUS


@pytest.mark.parametrize(
    ("args", "statuses"),
    [
        (["lab", "status"], {SIGPIPE_STATUS}),
        # argparse drops a failed help text itself and exits 0; quiet either way
        (["--help"], {0, SIGPIPE_STATUS}),
        (["sip", "lint", "--help"], {0, SIGPIPE_STATUS}),
    ],
    ids=["lab-status", "help", "sip-lint-help"],
)
def test_no_reader_at_all(tmp_path: Path, args: list[str], statuses: set[int]) -> None:
    """The reader is gone before the first write: every write fails, the
    command still ends quietly."""
    if args[0] == "lab":
        args = [*args, "--dir", str(tmp_path / "lab"), "--config", str(EXAMPLE)]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*SIPCLUSTER, *args], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""
    assert proc.returncode in statuses
