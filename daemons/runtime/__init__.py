"""The runtime the daemons share: config, logging, management, drivers and transports.

The glue every sans-I/O object is driven by (``driver``), the per-datagram
path of the SIP UDP transport (``datagrams``) and the counter it counts
messages with (``tally``), ``COMPILED_MODULES``, may be
compiled with mypyc by ``setup.py``, as a third group beside the SIP stack's
and the sip-proxy's (docs/sip-stack.md, "Compiled hot path"). They run
compiled under the same rules as ``protocols.sip``'s (fresh builds only,
``SIPCLUSTER_PURE_PYTHON=1`` for the sources) and only while the SIP stack runs
compiled too, since the compiled modules use the compiled SIP classes directly.
``COMPILED`` tells which is in use.
"""

from __future__ import annotations

from pathlib import Path

import protocols.sip

__all__ = ["COMPILED", "COMPILED_MODULES"]

#: The modules setup.py compiles, in dependency order.
COMPILED_MODULES = ("tally", "driver", "datagrams")

#: True when the mypyc-compiled modules of the runtime are in use.
COMPILED: bool = protocols.sip.select_build(
    __name__, Path(__file__).resolve().parent, COMPILED_MODULES,
    usable=protocols.sip.COMPILED)
