"""Which build of the sip-proxy's core runs: compiled with mypyc, or the sources.

``make compile`` builds ``daemons.sip_proxy.COMPILED_MODULES`` in place with the
SIP stack's and the runtime's; the core runs compiled only while its build is
fresh and the SIP stack and the runtime's modules run compiled too (the compiled
core uses their classes), and SIPCLUSTER_PURE_PYTHON=1 gives the sources.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import daemons.runtime as runtime_pkg
import daemons.sip_proxy as proxy_pkg
import protocols.sip as sip
from daemons.sip_proxy import COMPILED_MODULES
from protocols.sip import SourceFinder, select_build, stale_modules

ROOT = Path(__file__).resolve().parents[3]
HERE = ROOT / "daemons" / "sip_proxy"
RUNTIME = ROOT / "daemons" / "runtime"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

PROBE = (
    "import json\n"
    "import protocols.sip as s, daemons.sip_proxy as p\n"
    "import daemons.sip_proxy.proxy as core, daemons.sip_proxy.workers as w\n"
    "print(json.dumps([s.COMPILED, p.COMPILED, core.__file__,\n"
    "                  sys.modules[w.WorkerCore.__module__].__file__]))\n"
)


def probe(**env: str) -> tuple[bool, bool, str, str]:
    """Import the proxy core in a new interpreter: (SIP stack compiled, core
    compiled, proxy module's file, worker core module's file)."""
    environ = {k: v for k, v in os.environ.items() if k != "SIPCLUSTER_PURE_PYTHON"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", "import sys\n" + PROBE], cwd=ROOT,
                         env=environ, capture_output=True, text=True, timeout=60, check=True)
    sip_compiled, compiled, core, worker = json.loads(out.stdout)
    return sip_compiled, compiled, core, worker


def make_tree(tmp_path: Path) -> Path:
    for name in COMPILED_MODULES:
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    return tmp_path


@pytest.fixture
def meta_path() -> Iterator[list[object]]:
    """sys.meta_path, restored after the test."""
    saved = list(sys.meta_path)
    yield sys.meta_path
    sys.meta_path[:] = saved


def test_fresh_build_runs_compiled_when_the_sip_stack_does(
        tmp_path: Path, meta_path: list[object]) -> None:
    tree = make_tree(tmp_path)
    before = len(meta_path)
    assert select_build("sc_probe_pkg", tree, COMPILED_MODULES, usable=True) is \
        (os.environ.get("SIPCLUSTER_PURE_PYTHON", "") in ("", "0"))
    assert select_build("sc_probe_pkg", tree, COMPILED_MODULES, usable=False) is False
    finder = meta_path[0]
    assert len(meta_path) > before and isinstance(finder, SourceFinder)
    spec = finder.find_spec("sc_probe_pkg.proxy")
    assert spec is not None and spec.origin == str(tree / "proxy.py")
    assert finder.find_spec("sc_probe_pkg.replication") is None  # not a compiled module
    assert finder.find_spec("other_pkg.proxy") is None


def test_pure_python_on_request() -> None:
    sip_compiled, compiled, core, worker = probe(SIPCLUSTER_PURE_PYTHON="1")
    assert not sip_compiled and not compiled
    assert core.endswith("proxy.py") and worker.endswith("worker_core.py")


def test_build_in_use_matches_what_is_on_disk() -> None:
    sip_compiled, compiled, core, worker = probe()
    assert compiled == (sip_compiled and stale_modules(HERE, COMPILED_MODULES) == []
                        and stale_modules(RUNTIME, runtime_pkg.COMPILED_MODULES) == [])
    suffix = SUFFIX if compiled else ".py"
    assert core.endswith(suffix) and worker.endswith(suffix)


def test_this_run_uses_the_build_it_asked_for() -> None:
    """make test compiles first: a CI run that silently fell back is a failure."""
    if os.environ.get("SIPCLUSTER_PURE_PYTHON", "") not in ("", "0"):
        assert not proxy_pkg.COMPILED
    elif os.environ.get("CI") == "true":
        assert sip.COMPILED and proxy_pkg.COMPILED
        assert stale_modules(HERE, COMPILED_MODULES) == []
    else:
        assert proxy_pkg.COMPILED == (sip.COMPILED and runtime_pkg.COMPILED and
                                      stale_modules(HERE, COMPILED_MODULES) == [])
