"""Build hook: compile the SIP hot path and the sip-proxy's core with mypyc.

The modules listed in ``protocols/sip/__init__.py``,
``daemons/sip_proxy/__init__.py`` and ``daemons/runtime/__init__.py``
(``COMPILED_MODULES`` of each) are plain, fully typed Python; mypyc turns them
into C extensions that run the same code two to three times faster on CPython.
They are built together, as three groups (one shared library each,
``protocols.sip._sipstack``, ``daemons.sip_proxy._proxycore`` and
``daemons.runtime._runtimecore``): the other two groups call into the SIP
stack's natively. Every other module, and the whole project when no C
compiler or Python headers are at hand, stays pure Python, and both packages
fall back to the sources by themselves (see their ``__init__``).
``SIPCLUSTER_COMPILE=0`` skips compiling.

    python setup.py build_ext --inplace     # what ``make`` runs in a checkout
    pip install .                           # compiles when it can
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
# only the module lists are read here: no warning about the builds being replaced
os.environ["SIPCLUSTER_PURE_PYTHON"] = "1"

from daemons.runtime import COMPILED_MODULES as RUNTIME_MODULES  # noqa: E402
from daemons.sip_proxy import COMPILED_MODULES as PROXY_MODULES  # noqa: E402
from protocols.sip import COMPILED_MODULES as SIP_MODULES  # noqa: E402


def extensions() -> list[object]:
    if os.environ.get("SIPCLUSTER_COMPILE", "1") == "0":
        return []
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    compiler = os.environ.get("CC", "cc").split()[0]
    if not headers.exists() or shutil.which(compiler) is None:
        print(f"sipcluster: no {compiler} or no {headers}: SIP stack and proxy stay pure Python",
              file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("sipcluster: mypyc not installed: SIP stack and proxy stay pure Python",
              file=sys.stderr)
        return []
    sip = [f"protocols/sip/{name}.py" for name in SIP_MODULES]
    proxy = [f"daemons/sip_proxy/{name}.py" for name in PROXY_MODULES]
    runtime = [f"daemons/runtime/{name}.py" for name in RUNTIME_MODULES]
    # each group's shared library inside its package, so every install (wheel,
    # editable, in place) finds it where the compiled modules look for it
    return list(mypycify(mypy_flags() + sip + proxy + runtime, opt_level="3", debug_level="0",
                         separate=[(sip, "protocols.sip._sipstack"),
                                   (proxy, "daemons.sip_proxy._proxycore"),
                                   (runtime, "daemons.runtime._runtimecore")]))


#: third-party packages the proxy's modules import (through daemons.runtime)
RUNTIME_PACKAGES = ("structlog", "cryptography", "aiohttp", "prometheus_client", "dns")


def mypy_flags() -> list[str]:
    """Flags for the type check mypyc runs first. ``pip install`` builds in an
    isolated environment that has mypy but not the project's dependencies: their
    types are then unknown (Any), which the strict settings of pyproject.toml
    would refuse; the compiled code is the same either way, since mypyc calls
    such libraries through the Python API."""
    missing = [name for name in RUNTIME_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return []
    print(f"sipcluster: {', '.join(missing)} not in the build environment: "
          "typed as Any for compiling", file=sys.stderr)
    return ["--ignore-missing-imports", "--no-warn-return-any", "--allow-subclassing-any",
            "--allow-untyped-decorators", "--allow-untyped-calls", "--no-warn-unused-ignores"]


class BuildExt(build_ext):
    """build_ext that marks every module it built in place as new.

    mypyc puts the code of all modules in one shared library and gives each
    module a small stub; a stub whose text did not change is not rebuilt and
    keeps its old time, which ``protocols.sip`` would take for a stale build.
    """

    def run(self) -> None:
        super().run()
        if self.inplace:
            for ext in self.extensions:
                path = Path(self.get_ext_fullpath(ext.name))
                if path.exists():
                    os.utime(path)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
