"""The sip-proxy daemon: the SIP edge of a data centre (docs/sip-proxy.md).

The proxy core's modules (``COMPILED_MODULES``: what every proxied message
goes through) may be compiled with mypyc by ``setup.py``, as a second group
beside the SIP stack's (docs/sip-stack.md, "Compiled hot path"). They run
compiled under the same rules as ``protocols.sip``'s (fresh builds only,
``SIPCLUSTER_PURE_PYTHON=1`` for the sources) and only while the SIP stack and
the runtime's compiled modules run compiled too, since the compiled core uses
their classes (the SIP messages, the transaction layer, the timer slot)
directly. ``COMPILED`` tells which is in use.
"""

from __future__ import annotations

from pathlib import Path

import daemons.runtime
import protocols.sip

__all__ = ["COMPILED", "COMPILED_MODULES"]

#: The modules setup.py compiles, in dependency order.
COMPILED_MODULES = ("registrar", "routing", "forwarding", "flows", "security", "registrar_front",
                    "hop_by_hop", "proxy", "worker_core")

#: True when the mypyc-compiled proxy core is in use.
COMPILED: bool = protocols.sip.select_build(
    __name__, Path(__file__).resolve().parent, COMPILED_MODULES,
    usable=protocols.sip.COMPILED and daemons.runtime.COMPILED)
