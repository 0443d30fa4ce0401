"""The ``sipcluster`` command: one entry point, a subcommand per daemon and
per operators' tool.

Subcommands are looked up in :data:`COMMANDS`; each names a module exposing
``add_parser(subparsers)`` and ``run(args) -> int``, imported only when the
command line needs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

#: (group, module) per subcommand; group None means a top-level command.
COMMANDS: list[tuple[str | None, str]] = [
    ("sip", "daemons.tools.sip_lint"),
    ("sip", "daemons.tools.sip_responder"),
    ("sip", "daemons.tools.sip_uac"),
    (None, "daemons.tools.tlib_cli"),
    (None, "daemons.sip_server.service"),
    (None, "daemons.lab.cli"),
    (None, "daemons.t_controller.service"),
    (None, "daemons.geo_dns.service"),
    (None, "daemons.sip_proxy.service"),
    (None, "daemons.feature_server.service"),
    (None, "daemons.feature_server.cli"),
    (None, "daemons.rtm_server.service"),
    (None, "daemons.rtm_server.cli"),
    (None, "daemons.status_aggregator.service"),
    (None, "daemons.status_aggregator.cli"),
    (None, "daemons.runtime.certs"),
    (None, "daemons.director.service"),
    (None, "daemons.director.cli"),
    (None, "daemons.collective.service"),
]

GROUP_HELP = {"sip": "SIP tools (lint a message, test endpoints)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipcluster",
        description="SIP cluster daemons and tools: one config file per cluster, one command.",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for group, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                continue  # not part of this build
            raise
        target = top
        if group is not None:
            if group not in groups:
                gp = top.add_parser(group, help=GROUP_HELP.get(group))
                sub = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                sub.required = True
                groups[group] = sub
            target = groups[group]
        before = set(target.choices)
        module.add_parser(target)
        for name in set(target.choices) - before:
            sub_parser = target.choices[name]
            if sub_parser.get_default("run") is None:
                sub_parser.set_defaults(run=module.run)
    return parser


def command_names(parser: argparse.ArgumentParser | None = None) -> set[str]:
    """The top-level subcommands of this build (``sip-server``, ``lab`` ...)."""
    parser = parser if parser is not None else build_parser()
    return {name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status.

    A reader that goes away early (``sipcluster lab status | head -1``) ends
    the command quietly with status 141, as SIGPIPE would end a C program (128 +
    13), instead of a BrokenPipeError traceback (Python ignores SIGPIPE; see
    the Python documentation, "Note on SIGPIPE").
    """
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, not at exit, where an error is only "ignored"
    except BrokenPipeError:
        # nothing more reaches the reader: send what is still buffered nowhere,
        # so the interpreter's own flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    result: int = run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
