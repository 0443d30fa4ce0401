"""Which build of the SIP hot path runs: compiled with mypyc, or the sources.

``make compile`` builds ``protocols.sip.COMPILED_MODULES`` in place; an edited
source must never run as stale machine code, and SIPCLUSTER_PURE_PYTHON=1
must give the sources.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import protocols.sip as sip
from protocols.sip import COMPILED_MODULES, stale_modules

ROOT = Path(__file__).resolve().parents[3]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

PROBE = (
    "import json\n"
    "import protocols.sip as s\n"
    "import protocols.sip.message as m, protocols.sip.transaction as t\n"
    "print(json.dumps([s.COMPILED, m.__file__, t.__file__]))\n"
)


def probe(**env: str) -> tuple[bool, str, str]:
    """Import the stack in a new interpreter; (COMPILED, message file, transaction file)."""
    environ = {k: v for k, v in os.environ.items() if k != "SIPCLUSTER_PURE_PYTHON"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environ,
                         capture_output=True, text=True, timeout=60, check=True)
    compiled, message, transaction = json.loads(out.stdout)
    return compiled, message, transaction


def make_tree(tmp_path: Path, built: list[str]) -> Path:
    for name in COMPILED_MODULES:
        (tmp_path / f"{name}.py").write_text("")
    for name in built:
        (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    return tmp_path


def test_sources_only_is_not_compiled(tmp_path: Path) -> None:
    assert stale_modules(make_tree(tmp_path, [])) is None


def test_fresh_build_is_used(tmp_path: Path) -> None:
    assert stale_modules(make_tree(tmp_path, list(COMPILED_MODULES))) == []


def test_source_edited_after_the_build_is_stale(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, list(COMPILED_MODULES))
    later = time.time() + 60
    os.utime(tree / "message.py", (later, later))
    assert stale_modules(tree) == ["message"]


def test_source_unpacked_a_moment_after_its_extension_is_not_stale(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, list(COMPILED_MODULES))
    built = (tree / f"transaction{SUFFIX}").stat().st_mtime
    os.utime(tree / "transaction.py", (built + 1, built + 1))
    assert stale_modules(tree) == []


def test_a_module_missing_from_a_partial_build_is_stale(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, [n for n in COMPILED_MODULES if n != "timers"])
    assert stale_modules(tree) == ["timers"]


def test_pure_python_on_request() -> None:
    compiled, message, transaction = probe(SIPCLUSTER_PURE_PYTHON="1")
    assert not compiled
    assert message.endswith("message.py") and transaction.endswith("transaction.py")


def test_build_in_use_matches_what_is_on_disk() -> None:
    compiled, message, transaction = probe()
    assert compiled == (stale_modules() == [])
    suffix = SUFFIX if compiled else ".py"
    assert message.endswith(suffix) and transaction.endswith(suffix)


def test_this_run_uses_the_build_it_asked_for() -> None:
    """make test compiles first: a CI run that silently fell back is a failure."""
    if os.environ.get("SIPCLUSTER_PURE_PYTHON", "") not in ("", "0"):
        assert not sip.COMPILED
    elif os.environ.get("CI") == "true":
        assert sip.COMPILED
        assert stale_modules() == []
    else:
        assert sip.COMPILED == (stale_modules() == [])
