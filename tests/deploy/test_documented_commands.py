"""Every ``sipcluster COMMAND`` the documentation and the deployment files name
is a command of the real CLI (:func:`daemons.cli.build_parser`), and every
``sipcluster-KIND@`` unit they name is a unit of deploy/systemd/. A daemon gets
its unit, its compose service and its instructions when its command exists,
not before.

Where commands are looked for:

* docs/*.md and README.md: code (fenced blocks and inline spans), at a command
  position -- the start of a shell line or of a part of a pipeline or list,
  after a prompt, ``sudo``, ``exec`` or ``VAR=value``; ``sipcluster``, a path
  ending in ``/sipcluster`` or ``python -m daemons.cli``;
* deploy/systemd/*: the ``Exec*=`` command lines, and the comments;
* deploy/compose/docker-compose.yml: the ``command`` of every service built
  from the sipcluster image (its entry point is ``sipcluster``), and the
  comments.

The first word after the program must be a top-level command; when that
command has subcommands of its own (``sip lint``, ``geo-dns zones``) and a
word follows, that word must be one of them.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemons.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
COMPOSE_FILE = REPO / "deploy" / "compose" / "docker-compose.yml"
#: the image every sipcluster service is built from; its ENTRYPOINT is sipcluster
DOCKERFILE = "deploy/compose/Dockerfile"

_COMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")
_SEPARATORS = re.compile(r"\|\||&&|[|;&]|\$\(|`|\(")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
_FENCE = re.compile(r"^(```|~~~)")
_TEMPLATE_MENTION = re.compile(r"\bsipcluster-([a-z0-9-]+)@")
_UNIT_MENTION = re.compile(r"\bsipcluster-([a-z0-9-]+)\.(service|target)\b")


@dataclass(frozen=True)
class Mention:
    """``sipcluster ARGS...`` found at ``where``."""

    where: str
    args: tuple[str, ...]


# ---------------------------------------------------------------- extraction


def _shell_words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in an example: plain words will do
        return text.split()


def commands_in_shell_text(text: str) -> Iterator[tuple[str, ...]]:
    """The argument lists of ``sipcluster`` invocations at command positions of
    a shell line (continuations already joined)."""
    for part in _SEPARATORS.split(text):
        words = _shell_words(part)
        while words and (words[0] in ("$", "#", ">", "sudo", "exec", "env", "time")
                         or _ASSIGNMENT.fullmatch(words[0])):
            words = words[1:]
        if not words:
            continue
        program = words[0]
        if program == "sipcluster" or program.endswith("/sipcluster"):
            yield tuple(words[1:])
        elif re.fullmatch(r"(.*/)?python[0-9.]*", program) \
                and words[1:3] == ["-m", "daemons.cli"]:
            yield tuple(words[3:])


def _join_continuations(lines: list[str]) -> list[str]:
    out: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def mentions_in_markdown(text: str, where: str) -> Iterator[Mention]:
    """Commands in the code of a Markdown file: fenced blocks line by line,
    inline spans (which may run over a line break) each as one line."""
    prose: list[str] = []
    fenced: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            if in_fence:
                for shell_line in _join_continuations(fenced):
                    for args in commands_in_shell_text(shell_line):
                        yield Mention(where, args)
                fenced = []
            in_fence = not in_fence
            prose.append("")
            continue
        (fenced if in_fence else prose).append(line)
    for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
        for args in commands_in_shell_text(" ".join(span.split())):
            yield Mention(where, args)


def mentions_in_unit(text: str, where: str) -> Iterator[Mention]:
    """Commands of a systemd unit: its ``Exec*=`` lines and its comments."""
    for line in _join_continuations(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith(("#", ";")):
            for args in commands_in_shell_text(stripped.lstrip("#; ")):
                yield Mention(where, args)
            continue
        key, sep, value = stripped.partition("=")
        if sep and key.startswith("Exec"):
            # systemd prefixes: '-' (ignore failure), '@', ':', '+', '!'
            for args in commands_in_shell_text(value.lstrip("-@:+!")):
                yield Mention(where, args)


def mentions_in_compose(text: str, where: str) -> Iterator[Mention]:
    """The command of every service run from the sipcluster image, and the
    commands in the file's comments."""
    doc: Any = yaml.safe_load(text)
    for name, service in (doc.get("services") or {}).items():
        build = service.get("build")
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        if dockerfile == DOCKERFILE:
            command = service.get("command") or []
            args = shlex.split(command) if isinstance(command, str) else command
            yield Mention(f"{where}: services.{name}.command", tuple(str(a) for a in args))
    comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    for line in _join_continuations(comments):
        for args in commands_in_shell_text(line.strip()):
            yield Mention(where, args)


def unit_names_in(text: str) -> set[str]:
    """The unit files that ``sipcluster-KIND@NAME(.service)``, ``sipcluster-X.service``
    mentions refer to (templates by their ``@.service`` file name)."""
    templates = {f"sipcluster-{base}@.service" for base in _TEMPLATE_MENTION.findall(text)}
    return templates | {f"sipcluster-{base}.{suffix}"
                        for base, suffix in _UNIT_MENTION.findall(text)}


# ------------------------------------------------------------------- checking


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def problems_of(mentions: list[Mention], parser: argparse.ArgumentParser) -> list[str]:
    """What names a command the parser does not have, one line per mention."""
    top = _subcommands(parser)
    problems = []
    for mention in mentions:
        if not mention.args or not _COMMAND_WORD.fullmatch(mention.args[0]):
            continue  # an option (--help) or a placeholder (KIND, COMMAND)
        name = mention.args[0]
        if name not in top:
            problems.append(f"{mention.where}: `sipcluster {name}` is not a command")
            continue
        below = _subcommands(top[name])
        if below and len(mention.args) > 1 and _COMMAND_WORD.fullmatch(mention.args[1]) \
                and mention.args[1] not in below:
            problems.append(
                f"{mention.where}: `sipcluster {name} {mention.args[1]}` is not a command")
    return problems


def _documents() -> list[Path]:
    return [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def _all_mentions() -> list[Mention]:
    found: list[Mention] = []
    for path in _documents():
        found += mentions_in_markdown(path.read_text(encoding="utf-8"), _rel(path))
    for path in sorted(p for p in SYSTEMD.iterdir() if p.is_file()):
        found += mentions_in_unit(path.read_text(encoding="utf-8"), _rel(path))
    found += mentions_in_compose(COMPOSE_FILE.read_text(encoding="utf-8"), _rel(COMPOSE_FILE))
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(name="parser", scope="module")
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def test_every_mentioned_command_exists(parser: argparse.ArgumentParser) -> None:
    mentions = _all_mentions()
    # the walk sees the places that do name commands (it is not looking at nothing)
    seen = {(m.where.split(":")[0], m.args[0]) for m in mentions if m.args}
    for expected in [("README.md", "lab"), ("README.md", "sip"), ("docs/deploy.md", "geo-dns"),
                     ("deploy/systemd/sipcluster-sip-server@.service", "sip-server"),
                     ("deploy/compose/docker-compose.yml", "sip-proxy"),
                     ("deploy/compose/docker-compose.yml", "geo-dns")]:
        assert expected in seen, expected
    assert problems_of(mentions, parser) == []


def test_every_mentioned_unit_exists() -> None:
    units = {p.name for p in SYSTEMD.iterdir() if p.is_file()}
    for path in [*_documents(), *SYSTEMD.iterdir(), COMPOSE_FILE]:
        if not path.is_file():
            continue
        missing = unit_names_in(path.read_text(encoding="utf-8")) - units
        assert not missing, f"{_rel(path)} names units that deploy/systemd lacks: {missing}"


def test_every_unit_runs_a_command(parser: argparse.ArgumentParser) -> None:
    """Each unit of deploy/systemd starts an existing ``sipcluster`` command."""
    top = _subcommands(parser)
    for path in sorted(SYSTEMD.glob("*.service")):
        starts = [m for m in mentions_in_unit(path.read_text(encoding="utf-8"), _rel(path))
                  if m.args]
        assert starts, path.name
        assert all(m.args[0] in top for m in starts), (path.name, starts)


# ------------------------------------------------- the checks are able to fail


def test_a_missing_command_is_caught_in_every_kind_of_file(
    parser: argparse.ArgumentParser,
) -> None:
    markdown = """
Run `sipcluster media-server --config F --name FS_dc1` or:

```sh
sudo SIPCLUSTER_LOG_LEVEL=debug /opt/sipcluster/bin/sipcluster sbc-server \\
    --config /etc/sipcluster/cluster.toml --name RTM_hub
sipcluster lab status | head -1 && sipcluster recorder --name SA_1
python3 -m daemons.cli dialer --name D1
sipcluster sip ping sip:127.0.1.11
```

Not commands: `sipcluster KIND`, `sipcluster --help`, `sipcluster-sip-server@.service`,
and the user in `install -g sipcluster my-cluster.toml`.
"""
    unit = ("[Service]\n# systemctl enable --now sipcluster-media-server@FS_dc1\n"
            "ExecStart=-/opt/sipcluster/bin/sipcluster media-server --name %i\n")
    compose = f"""
# the hub:
#   sipcluster sbc-server --config cluster.toml \\
#       --name RTM_hub
services:
  FS_dc1:
    build: {{context: ../.., dockerfile: {DOCKERFILE}}}
    command: ["media-server", "--name", "FS_dc1"]
  SIPS_dc1_1:
    build: {{context: ../.., dockerfile: {DOCKERFILE}}}
    command: ["sip-server", "--name", "SIPS_dc1_1"]
  bind:
    image: internetsystemsconsortium/bind9:9.18
    command: ["-g", "-c", "/etc/bind/named.conf"]
"""
    mentions = [*mentions_in_markdown(markdown, "doc"), *mentions_in_unit(unit, "unit"),
                *mentions_in_compose(compose, "compose")]
    assert problems_of(mentions, parser) == [
        # fenced blocks first, then the inline spans
        "doc: `sipcluster sbc-server` is not a command",
        "doc: `sipcluster recorder` is not a command",
        "doc: `sipcluster dialer` is not a command",
        "doc: `sipcluster sip ping` is not a command",
        "doc: `sipcluster media-server` is not a command",
        "unit: `sipcluster media-server` is not a command",
        "compose: services.FS_dc1.command: `sipcluster media-server` is not a command",
        "compose: `sipcluster sbc-server` is not a command",
    ]
    assert unit_names_in(markdown + unit) == {"sipcluster-sip-server@.service",
                                              "sipcluster-media-server@.service"}
