"""docs/tlib.md's ``sipcluster tlib`` examples, run against a real lab.

Every fenced block with the info string ``console tlib-example`` is a shell
session: ``$ sipcluster tlib ... <<'EOF'``, the request lines, ``EOF``, the
events printed (JSON lines) and the tool's ``tlib:`` messages, then ``$ echo
$?`` and the exit status. Each runs here as written, its addresses moved to
this lab's subnets, with the phones of 1001 and 1002 registered as the doc
says; the events must be those the doc shows, in order, attribute for
attribute. Values that differ from run to run (times, ConnID, CallUUID, the
node that took a phone's registration) are matched by type, and a value shown
twice must be the same value twice.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

LAB_SUBNETS = {"127.0.1.": "127.0.53.", "127.0.2.": "127.0.54."}
# the doc's desktop talks to the first node of DC1; the other nodes are not needed
LAB_DROP = ("SIPS_dc1_2", "TC_dc1_2", "SIPS_dc2_2", "TC_dc2_2")

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "tlib.md"
#: attributes (and AttributeExtensions keys) whose values vary between runs
VARYING = {"AttributeTimeinSecs", "AttributeTimeinuSecs", "owner"}
#: identifiers that vary too, but name one thing: shown twice, the same value twice
IDENTIFIERS = {"AttributeConnID", "AttributeCallUUID"}


@dataclass(frozen=True)
class Example:
    """One documented session of ``sipcluster tlib``."""

    argv: list[str]
    stdin: str
    events: list[dict[str, Any]]
    messages: list[str]
    status: int


def parse_example(block: str) -> Example:
    lines = block.splitlines()
    command = lines[0]
    assert command.startswith("$ sipcluster tlib ") and command.endswith("<<'EOF'"), command
    argv = shlex.split(command[2:].removesuffix("<<'EOF'"))
    end = lines.index("EOF")
    stdin = "".join(line + "\n" for line in lines[1:end])
    echo = lines.index("$ echo $?")
    output = lines[end + 1:echo]
    assert all(line.startswith(("{", "tlib: ")) for line in output), output
    return Example(argv, stdin, [json.loads(line) for line in output if line.startswith("{")],
                   [line for line in output if line.startswith("tlib: ")], int(lines[echo + 1]))


def documented_examples() -> list[Example]:
    blocks = re.findall(r"^```console tlib-example\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    return [parse_example(block) for block in blocks]


def differences(shown: Any, got: Any, where: str, seen: dict[tuple[str, Any], Any]) -> list[str]:
    """How ``got`` differs from what the doc shows: VARYING values by type,
    IDENTIFIERS by type and consistently (``seen`` maps (key, shown value) to
    the value first met), everything else by value."""
    if isinstance(shown, dict) and isinstance(got, dict):
        problems = [f"{where}: {key} not shown in the doc ({got[key]!r})"
                    for key in got.keys() - shown.keys()]
        for key, value in shown.items():
            if key not in got:
                problems.append(f"{where}: {key} shown but not sent")
            elif key in VARYING or key in IDENTIFIERS:
                same = seen.setdefault((key, json.dumps(value)), got[key])
                if type(got[key]) is not type(value) or (key in IDENTIFIERS
                                                         and same != got[key]):
                    problems.append(f"{where}: {key} {got[key]!r} (doc: {value!r})")
            else:
                problems += differences(value, got[key], f"{where}.{key}", seen)
        return problems
    if shown == got and type(shown) is type(got):
        return []
    return [f"{where}: {got!r} (doc: {shown!r})"]


def run_example(example: Example, subnets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = example.argv[1:]
    for old, new in subnets.items():
        argv = [word.replace(old, new) for word in argv]
    return subprocess.run([sys.executable, "-m", "daemons.cli", *argv], input=example.stdin,
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_the_doc_has_examples() -> None:
    examples = documented_examples()
    assert len(examples) >= 2
    assert all(e.argv[:3] == ["sipcluster", "tlib", "--connect"] for e in examples)


def test_examples_answer_as_documented(
    lab: Any, baresip_phone: Callable[..., Any]
) -> None:
    """Phones 1001 and 1002 registered in DC1 (auto-answering), then each example."""
    baresip_phone("1001", "dc1")
    baresip_phone("1002", "dc1")
    for number, example in enumerate(documented_examples(), 1):
        result = run_example(example, lab.subnets)
        got = [json.loads(line) for line in result.stdout.splitlines()]
        report = (f"example {number}: exit {result.returncode}\n{result.stdout}"
                  f"{result.stderr}")
        assert [e["message"] for e in got] == [e["message"] for e in example.events], report
        seen: dict[tuple[str, Any], Any] = {}
        problems = [p for i, (shown, event) in enumerate(zip(example.events, got, strict=True))
                    for p in differences(shown, event, f"event {i + 1} {shown['message']}", seen)]
        assert not problems, "\n".join(problems) + "\n" + report
        assert result.stderr.splitlines() == example.messages, report
        assert result.returncode == example.status, report
