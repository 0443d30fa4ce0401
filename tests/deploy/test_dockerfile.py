"""deploy/compose/Dockerfile, checked structurally (no Docker engine runs
here, so no build): a slim Python 3.11 base, a non-root user, a HEALTHCHECK
on /healthz, nothing fetched from URLs, every COPY source present in the
build context and let through by Dockerfile.dockerignore. Also the health
probe the image runs, against a real management listener.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import sys
from pathlib import Path

import pytest

from daemons.runtime.management import ManagementServer, Metrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROBE = COMPOSE_DIR / "healthcheck.py"

Instruction = tuple[str, str]  # (INSTRUCTION, arguments)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments dropped, backslash continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if not line:
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            result.append([])
        assert result, f"{ins[0]} before the first FROM"
        result[-1].append(ins)
    return result


@pytest.fixture(name="instructions")
def _instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_every_stage_is_python_311_slim(instructions: list[Instruction]) -> None:
    froms = [args.split()[0] for word, args in instructions if word == "FROM"]
    assert froms, "no FROM"
    assert all(image == "python:3.11-slim" for image in froms), froms


def test_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    final = stages(instructions)[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage has no USER: the daemon would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0"), users[-1]
    # the user and group are created in the image with the ids USER names
    runs = " ".join(args for word, args in final if word == "RUN")
    assert f"useradd --system --uid {user} " in runs, runs
    assert f"groupadd --system --gid {group} " in runs, runs


def test_healthcheck_probes_healthz(instructions: list[Instruction]) -> None:
    final = stages(instructions)[-1]
    checks = [args for word, args in final if word == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = _exec_form(command)
    copied = {_exec_form(args)[-1] if args.startswith("[") else args.split()[-1]
              for word, args in final if word == "COPY"}
    assert argv[-1] in copied, "the probe script is not copied into the image"
    env = " ".join(args for word, args in final if word == "ENV")
    assert "/healthz" in env


def test_nothing_is_fetched_from_urls(instructions: list[Instruction]) -> None:
    for word, args in instructions:
        if word == "ADD":
            for token in args.split():
                assert "://" not in token and not token.startswith("git@"), args
        if word == "RUN":
            assert "curl " not in args and "wget " not in args, args


def test_entrypoint_and_stop_signal(instructions: list[Instruction]) -> None:
    final = stages(instructions)[-1]
    (entrypoint,) = [args for word, args in final if word == "ENTRYPOINT"]
    assert _exec_form(entrypoint) == ["/opt/sipcluster/bin/sipcluster"]
    assert [args for word, args in final if word == "STOPSIGNAL"] == ["SIGTERM"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; a pattern
    matches a path or any of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(c, pat) for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def test_copy_sources_exist_and_pass_the_dockerignore(instructions: list[Instruction]) -> None:
    ignore = COMPOSE_DIR / "Dockerfile.dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    sources: list[str] = []
    for word, args in instructions:
        if word != "COPY" or args.startswith("--from"):
            continue
        *srcs, _dest = args.split()
        sources += srcs
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is excluded from the build context"
    assert _ignored(".venv/bin/python", patterns)  # the context stays small
    assert _ignored("tests/conftest.py", patterns)


async def _run_probe(url: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PROBE), url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_probe_follows_healthz() -> None:
    """Exit 0 on 200, 1 on 503 (a failing health check) and when nothing listens."""
    healthy = {"ok": True}
    server = ManagementServer(Metrics(namespace="probe_test"), app_name="probe_test")
    server.add_health_check("listeners", lambda: (healthy["ok"], {}))
    port = await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        assert await _run_probe(url) == (0, f"{url}: HTTP 200\n")
        healthy["ok"] = False
        assert await _run_probe(url) == (1, f"{url}: HTTP 503\n")
    finally:
        await server.stop()
    code, out = await _run_probe(url)
    assert code == 1 and out.startswith(f"{url}: "), out
