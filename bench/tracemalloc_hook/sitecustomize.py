"""Python-heap growth of chosen daemons, for ``bench/bench_drill.py --tracemalloc``.

Python imports this module at start-up when its directory is on
``PYTHONPATH``. It does nothing unless ``SIPCLUSTER_TRACEMALLOC_MATCH`` names
a word of the process's command line (a daemon kind such as ``sip-server``,
comma-separated for several). In a matching process it starts ``tracemalloc``
(``SIPCLUSTER_TRACEMALLOC_FRAMES`` frames, 8 by default) after
``SIPCLUSTER_TRACEMALLOC_EVERY`` seconds (120 by default), so that the
daemon's start-up is neither traced nor slowed, takes a base snapshot as many
seconds later and then one every as many seconds, and appends to
``SIPCLUSTER_TRACEMALLOC_DIR/PID.jsonl`` one JSON line per snapshot: the
process's ``--name``, the traced heap, and the allocation sites that grew most
since the base snapshot (size and block counts now and their growth, with the
traceback). What was allocated before tracing started is not seen at all,
and what was allocated in the first interval of tracing is in the base
snapshot, not in the growth.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

#: allocation sites written per snapshot (the largest growth first)
TOP = 30
#: frames of tracemalloc's own machinery, left out of the sites
_NOISE = ("tracemalloc.py", "sitecustomize.py", "linecache.py")


def _name(argv: list[str]) -> str:
    if "--name" in argv[:-1]:
        return argv[argv.index("--name") + 1]
    return os.path.basename(argv[0]) if argv else "python"


def _watch(out_dir: str, every: float, name: str) -> None:
    import tracemalloc

    path = os.path.join(out_dir, f"{os.getpid()}.jsonl")
    time.sleep(every)
    tracemalloc.start(int(os.environ.get("SIPCLUSTER_TRACEMALLOC_FRAMES", "8")))
    time.sleep(every)
    base = tracemalloc.take_snapshot()
    started = time.time()
    while True:
        time.sleep(every)
        snap = tracemalloc.take_snapshot()
        stats = snap.compare_to(base, "traceback")
        del snap
        sites = []
        for stat in stats:
            if any(frame.filename.endswith(_NOISE) for frame in stat.traceback):
                continue
            sites.append({"size": stat.size, "size_diff": stat.size_diff, "count": stat.count,
                          "count_diff": stat.count_diff,
                          "traceback": [f"{f.filename}:{f.lineno}" for f in stat.traceback]})
            if len(sites) >= TOP:
                break
        del stats
        traced, peak = tracemalloc.get_traced_memory()
        line = {"name": name, "pid": os.getpid(), "t": time.time(),
                "since_base_s": round(time.time() - started, 1), "traced": traced,
                "peak": peak, "sites": sites}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _install() -> None:
    match = os.environ.get("SIPCLUSTER_TRACEMALLOC_MATCH", "")
    out_dir = os.environ.get("SIPCLUSTER_TRACEMALLOC_DIR", "")
    words = {w for w in match.split(",") if w}
    if not words or not out_dir or not words.intersection(sys.argv):
        return
    every = float(os.environ.get("SIPCLUSTER_TRACEMALLOC_EVERY", "120"))
    threading.Thread(target=_watch, args=(out_dir, every, _name(sys.argv)), daemon=True,
                     name="tracemalloc-snapshots").start()


_install()
