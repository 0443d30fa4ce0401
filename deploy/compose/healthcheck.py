"""Container health probe: GET a daemon's ``/healthz`` (daemons/runtime/management.py).

    python healthcheck.py [URL]      (default: $SIPCLUSTER_HEALTH_URL)

Exit 0 when the daemon answers 200, 1 otherwise (Docker's HEALTHCHECK
convention). Standard library only, so it runs in any Python image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9096/healthz"


def probe(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, reason) for one GET of ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"
    return status == 200, f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("SIPCLUSTER_HEALTH_URL", DEFAULT_URL)
    healthy, reason = probe(url)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
