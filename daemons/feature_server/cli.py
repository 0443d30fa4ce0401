"""``sipcluster fs``: the operators' commands for a feature-server's API
(docs/feature-server.md, "Operators' commands").

    sipcluster fs [--url URL | --config F --name FS] query DIGITS [--caller DN] [--reason R]
    sipcluster fs ... list   partitions|calling-profiles|users|dns|assignments
    sipcluster fs ... show   partitions|calling-profiles|users|dns NAME
    sipcluster fs ... put    partitions|calling-profiles|users|dns NAME (--json TEXT | --file F)
    sipcluster fs ... delete partitions|calling-profiles|users|dns NAME
    sipcluster fs ... partition NAME --rule 'PATTERN=>TARGET' ... [--block] [--inactive]
    sipcluster fs ... user NAME --dn DN ... [--pin PIN] [--calling-profile P]
    sipcluster fs ... assign KIND NAME PROFILE
    sipcluster fs ... mailbox NUMBER [--pin PIN] [--max-messages N]
    sipcluster fs ... mailbox-pin NUMBER PIN
    sipcluster fs ... reload
    sipcluster fs ... status

``list``, ``show`` and ``delete`` also take ``mailboxes`` (the voicemail's
``/api/mailboxes``). Answers are printed as JSON; the exit status is 0 for a 2xx, 1 for a refusal
(its reason on stderr), 2 when the feature-server cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from daemons.cluster.config import AppKind, load_cluster
from daemons.runtime.config import ConfigError

__all__ = ["add_parser", "run"]

COLLECTIONS = ("partitions", "calling-profiles", "users", "dns")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fs", help="provision a feature-server: dial plan, users, DNs; query its dial plan",
        description="Talks to a feature-server's HTTP API (docs/feature-server.md).")
    parser.add_argument("--url", help="the feature-server, e.g. http://127.0.1.31:8080")
    parser.add_argument("--config", type=Path, help="the cluster file (with --name)")
    parser.add_argument("--name", help="the feature-server's application name (with --config)")
    parser.add_argument("--token", default=os.environ.get("SIPCLUSTER_FS_TOKEN"),
                        help="the feature-server's api-token (default $SIPCLUSTER_FS_TOKEN; "
                             "with --config, read from the cluster file)")
    sub = parser.add_subparsers(dest="fs_action", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("query", help="what the dial plan says about a number")
    q.add_argument("digits")
    q.add_argument("--caller", help="the calling DN")
    q.add_argument("--reason", choices=("busy", "no-answer", "all"),
                   help="forwarding of the DN DIGITS instead")
    lst = sub.add_parser("list", help="list a collection")
    lst.add_argument("collection", choices=(*COLLECTIONS, "assignments", "mailboxes"))
    for action, text in (("show", "show one object"), ("delete", "delete one object")):
        p = sub.add_parser(action, help=text)
        p.add_argument("collection", choices=(*COLLECTIONS, "mailboxes"))
        p.add_argument("object_name", metavar="NAME")
    box = sub.add_parser("mailbox", help="create a voicemail mailbox")
    box.add_argument("object_name", metavar="NUMBER")
    box.add_argument("--pin")
    box.add_argument("--max-messages", type=int)
    box_pin = sub.add_parser("mailbox-pin", help="set a mailbox's PIN")
    box_pin.add_argument("object_name", metavar="NUMBER")
    box_pin.add_argument("pin")
    put = sub.add_parser("put", help="create or replace one object from JSON")
    put.add_argument("collection", choices=COLLECTIONS)
    put.add_argument("object_name", metavar="NAME")
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="the object as JSON text")
    source.add_argument("--file", type=Path, help="a JSON file ('-': standard input)")
    part = sub.add_parser("partition", help="create or replace a partition")
    part.add_argument("object_name", metavar="NAME")
    part.add_argument("--rule", action="append", required=True, metavar="PATTERN=>TARGET")
    part.add_argument("--block", action="store_true", help="matching calls are refused (403)")
    part.add_argument("--inactive", action="store_true")
    part.add_argument("--time-zone")
    part.add_argument("--days", help="e.g. mon,tue,wed")
    part.add_argument("--time-start", metavar="HH:MM")
    part.add_argument("--time-end", metavar="HH:MM")
    part.add_argument("--start-date", metavar="YYYY-MM-DD")
    part.add_argument("--end-date", metavar="YYYY-MM-DD")
    user = sub.add_parser("user", help="create or replace a user")
    user.add_argument("object_name", metavar="NAME")
    user.add_argument("--dn", action="append", default=[], help="a DN of the user (repeat)")
    user.add_argument("--pin")
    user.add_argument("--calling-profile")
    assign = sub.add_parser("assign", help="attach a calling profile to an object")
    assign.add_argument("kind", choices=("switch", "user", "extension", "softswitch", "trunk",
                                         "trunk-group", "routing-point"))
    assign.add_argument("object_name", metavar="NAME",
                        help="the object (for switch: internal or external)")
    assign.add_argument("profile")
    sub.add_parser("reload", help="read the cluster file and the store again")
    sub.add_parser("status", help="the dial plan in force")
    parser.set_defaults(run=run)


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    if args.config is None or args.name is None:
        raise ConfigError("fs", None, "give --url URL, or --config FILE --name FS")
    cfg = load_cluster(args.config)
    app = cfg.application(args.name, AppKind.FEATURE_SERVER)
    token = app.options.get("api-token")
    if args.token is None and isinstance(token, str):
        args.token = token
    return f"http://{app.host}:{app.port('http-port')}"


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    action = args.fs_action
    body: dict[str, Any]
    if action == "query":
        params = {"digits": args.digits, "caller": args.caller, "reason": args.reason}
        text = urllib.parse.urlencode({k: v for k, v in params.items() if v})
        return "GET", f"/dialplan?{text}", None
    if action == "list":
        return "GET", f"/api/{args.collection}", None
    if action == "show":
        return "GET", f"/api/{args.collection}/{args.object_name}", None
    if action == "delete":
        return "DELETE", f"/api/{args.collection}/{args.object_name}", None
    if action == "put":
        raw = args.json if args.json is not None else (
            sys.stdin.read() if str(args.file) == "-" else args.file.read_text())
        try:
            given = json.loads(raw)
        except ValueError as exc:
            raise ConfigError("fs put", None, f"not JSON: {exc}") from None
        return "PUT", f"/api/{args.collection}/{args.object_name}", given
    if action == "partition":
        body = {"rules": args.rule, "block": args.block, "active": not args.inactive}
        for key in ("time_zone", "time_start", "time_end", "start_date", "end_date"):
            if getattr(args, key):
                body[key.replace("_", "-")] = getattr(args, key)
        if args.days:
            body["days"] = [d.strip() for d in args.days.split(",") if d.strip()]
        return "PUT", f"/api/partitions/{args.object_name}", body
    if action == "user":
        body = {"dns": args.dn}
        if args.pin:
            body["pin"] = args.pin
        if args.calling_profile:
            body["calling-profile"] = args.calling_profile
        return "PUT", f"/api/users/{args.object_name}", body
    if action == "assign":
        return ("PUT", f"/api/assignments/{args.kind}/{args.object_name}",
                {"calling-profile": args.profile})
    if action == "mailbox":
        body = {"mailbox": args.object_name}
        if args.pin:
            body["pin"] = args.pin
        if args.max_messages is not None:
            body["max-messages"] = args.max_messages
        return "POST", "/api/mailboxes", body
    if action == "mailbox-pin":
        return "PUT", f"/api/mailboxes/{args.object_name}/pin", {"pin": args.pin}
    if action == "reload":
        return "POST", "/api/dial-plan/reload", None
    return "GET", "/api/dial-plan", None


def run(args: argparse.Namespace) -> int:
    try:
        base = _base_url(args)
        method, path, body = _request(args)
    except (ConfigError, OSError) as exc:
        print(f"fs: {exc}", file=sys.stderr)
        return 2
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read() or b"{}").get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        print(f"fs: {exc.code}: {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"fs: cannot reach {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0
