"""``sipcluster collective sync|status --config F --name NAME``: talk to a
running site over its ``http-port`` (docs/collective.md, "Operators' tools").

``sync`` starts a full sync with every peer site (guide: Peer Site
Configuration, "Synchronize") and prints what was sent; ``status`` prints the
site's status page. One JSON object on stdout; exit 0, or 1 when the site did
not answer (the reason on stderr), or 2 for a bad cluster file.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from daemons.cluster.config import AppKind, load_cluster
from daemons.runtime.config import ConfigError

__all__ = ["run_action"]

TIMEOUT = 10.0


def run_action(args: argparse.Namespace) -> int:
    try:
        config = load_cluster(args.config)
        app = config.application(args.name, AppKind.COLLECTIVE)
    except ConfigError as exc:
        print(f"collective: {exc}", file=sys.stderr)
        return 2
    host = app.host if ":" not in app.host else f"[{app.host}]"
    base = f"http://{host}:{app.ports['http-port']}"
    if args.action == "sync":
        request = urllib.request.Request(base + "/sync", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
    else:
        request = urllib.request.Request(base + "/status")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"collective: {args.name} at {base}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, sort_keys=True))
    return 0
