"""Run every benchmark script in bench/ and print their figures in one report.

Each ``bench/bench_*.py`` prints a Markdown table (medians over several runs,
failures counted beside every rate) and, on its last line, one JSON object
prefixed ``RESULT `` with its figures. This driver runs them one after the
other (so they do not compete for the two cores), prints the tables and
writes ``bench/results.json``.

    .venv/bin/python bench/run_all.py [NAME ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(a in s.stem for a in argv)]
    results: dict[str, object] = {}
    failed: list[str] = []
    for script in scripts:
        print(f"\n## {script.stem}\n", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent
        )
        elapsed = time.monotonic() - started
        figures = None
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                figures = json.loads(line[len("RESULT ") :])
            else:
                print(line)
        if proc.returncode != 0:
            failed.append(script.stem)
            print(f"\n**{script.stem} failed (exit {proc.returncode})**\n{proc.stderr[-2000:]}")
        results[script.stem] = {"figures": figures, "seconds": round(elapsed, 1),
                                "exit": proc.returncode}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures written to {HERE / 'results.json'}")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
