"""The README walked the way a new user walks it.

A fresh clone of this checkout is set up by its own Makefile (`make venv
compile`); the installed `sipcluster` console script then runs from another
directory: `sipcluster lab start`, every daemon healthy on the compiled SIP
stack, each softphone recipe of the README followed as written against that
lab (the shipped cluster file, the default addresses), `lab stop` with no
process left. Then `make lab` itself, stopped with Ctrl-C (SIGINT to its
process group, as a terminal sends it), and a plain `pip install` of the
project into a new virtual environment.

This is the only test that uses the lab's default addresses (127.0.1.x /
127.0.2.x); every other lab test moves the lab to subnets of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.lab.conftest import (  # type: ignore[import-not-found]
    Baresip,
    Linphonec,
    baresip_config,
    write_tone,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]


# ================================================================== the README


def recipe(name: str) -> list[str]:
    """The lines of the block that follows ``<!-- recipe: NAME -->`` in the README
    (a fenced block, or a table's rows)."""
    text = README.read_text()
    marker = f"<!-- recipe: {name} -->\n"
    assert marker in text, f"README has no recipe {name!r}"
    lines = text.split(marker, 1)[1].splitlines()
    if lines[0].startswith("```"):
        end = lines.index("```", 1)
        return lines[1:end]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def generic_settings() -> dict[str, str]:
    """The generic phone's table: setting -> the first `code` value of its row."""
    settings = {}
    for row in recipe("generic")[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        value = re.search(r"`([^`]+)`", cells[1])
        assert value is not None, row
        settings[cells[0]] = value.group(1)
    return settings


# ============================================================== processes


def run(argv: list[str], *, cwd: Path, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env)
    assert result.returncode == 0, (
        f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing of this test run's Python leaks in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST")}
    env.update(extra)
    return env


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def http_json(host: str, port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as resp:
        return json.loads(resp.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def assert_all_healthy(lab_dir: Path, sipcluster: Path, cwd: Path) -> dict[str, Any]:
    """``lab status`` says every daemon is healthy; each one's log says which SIP
    stack it runs; returns lab.json."""
    status = run([str(sipcluster), "lab", "status", "--dir", str(lab_dir)], cwd=cwd,
                 env=user_env())
    rows = [line.split(None, 1) for line in status.stdout.splitlines() if line.strip()]
    # applications of a kind this build has no command for are listed as such
    rows = [row for row in rows if not row[1].startswith("not started: this build has no")]
    assert rows and all(state == "healthy" for _, state in rows), status.stdout
    desc = dict(json.loads((lab_dir / "lab.json").read_text()))
    # the PSTN gateways behind the trunks are SIPp, not sipcluster daemons
    gateways = {g["name"] for centre in desc["data_centres"].values()
                for g in centre.get("pstn_gateways", [])}
    for name, _ in rows:
        if name in gateways:
            continue
        log = (lab_dir / "logs" / f"{name}.log").read_text()
        starting = [json.loads(line) for line in log.splitlines()
                    if '"daemon_starting"' in line]
        assert starting, f"{name} logged no daemon_starting"
        if name != "GeoDNS":
            assert starting[-1]["sip_stack"] == "compiled", f"{name}: {starting[-1]}"
    return desc


# ============================================================== the walk


@dataclass
class Walk:
    clone: Path
    elsewhere: Path

    @property
    def sipcluster(self) -> Path:
        return self.clone / ".venv" / "bin" / "sipcluster"


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    """A fresh clone of this checkout, set up by its Makefile as `make lab` does."""
    tmp = tmp_path_factory.mktemp("walk")
    clone = tmp / "sipcluster"
    run(["git", "clone", "-q", str(ROOT), str(clone)], cwd=tmp)
    run(["make", "venv", "compile"], cwd=clone, timeout=900, env=user_env())
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return Walk(clone, elsewhere)


@pytest.fixture(scope="module")
def user_lab(walk: Walk) -> Iterator[dict[str, Any]]:
    """`sipcluster lab start` run from another directory with the installed script."""
    lab_dir = walk.elsewhere / "lab"
    run([str(walk.sipcluster), "lab", "start", "--dir", str(lab_dir)], cwd=walk.elsewhere,
        env=user_env())
    try:
        yield assert_all_healthy(lab_dir, walk.sipcluster, walk.elsewhere)
    finally:
        subprocess.run([str(walk.sipcluster), "lab", "stop", "--dir", str(lab_dir)],
                       cwd=walk.elsewhere, capture_output=True, timeout=120)


def test_console_script_runs_the_compiled_stack_from_any_directory(walk: Walk) -> None:
    python = walk.clone / ".venv" / "bin" / "python"
    probe = run([str(python), "-c",
                 "import protocols.sip as s, protocols.sip.transaction as t; "
                 "print(s.COMPILED, t.__file__)"], cwd=walk.elsewhere, env=user_env())
    compiled, module_file = probe.stdout.split()
    assert compiled == "True"
    assert module_file.startswith(str(walk.clone)) and module_file.endswith(".so")
    usage = run([str(walk.sipcluster), "--help"], cwd=walk.elsewhere, env=user_env())
    assert "lab" in usage.stdout and "sip-proxy" in usage.stdout


def proxy_binding(lab: dict[str, Any], aor: str, user_agent: str) -> dict[str, Any] | None:
    """The binding of ``aor`` by a client whose User-Agent starts so, as the first
    proxy of DC1 holds it (every proxy holds every binding)."""
    proxy = lab["data_centres"]["dc1"]["proxies"][0]
    table = http_json(proxy["host"], proxy["http_port"], "/status/registrations")
    for binding in table["bindings"]:
        if binding["aor"] == aor and (binding.get("user_agent") or "").startswith(user_agent):
            return dict(binding)
    return None


def dc1_proxies(lab: dict[str, Any]) -> set[str]:
    return {p["name"] for p in lab["data_centres"]["dc1"]["proxies"]}


@pytest.fixture(scope="module")
def recipe_phones(
    user_lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """baresip and linphonec set up as the README says, each also told (as a test
    harness, not as part of the recipe) to play a tone, answer automatically and
    listen for commands."""
    from tests.conftest import free_port, require_tool  # type: ignore[import-not-found]

    tmp = tmp_path_factory.mktemp("phones")
    phones: dict[str, Any] = {}
    try:
        _start_baresip(tmp, phones, free_port(), require_tool("baresip"))
        _start_baresip(tmp, phones, free_port(), require_tool("baresip"), dc2=True)
        _start_linphonec(tmp, phones, require_tool("linphonec"))
        yield phones
    finally:
        if "linphonec" in phones:
            phones["linphonec"].stop()
        for key in ("baresip", "baresip-dc2"):
            if key in phones:
                phones[key].stop()


def _start_baresip(tmp: Path, phones: dict[str, Any], ctrl_port: int, binary: str,
                   *, dc2: bool = False) -> None:
    """baresip: the harness config, then the recipe's lines in place of the same keys."""
    key = "baresip-dc2" if dc2 else "baresip"
    config_lines = recipe("baresip-config-dc2" if dc2 else "baresip-config")
    listen = dict(line.split(None, 1) for line in config_lines)["sip_listen"].strip()
    host, port = listen.rsplit(":", 1)
    bdir = tmp / key
    bdir.mkdir()
    if dc2:
        found = re.search(r"`(<sip:1002@[^`]+)`", README.read_text())
        assert found is not None, "README: no account line for the DC2 phone"
        account = found.group(1)
    else:
        (account,) = recipe("baresip-accounts")
    aor = re.search(r"<(sip:[^>;]+)", account)
    assert aor is not None
    phone = Baresip(name=f"readme-{key}", workdir=bdir, address=host, sip_port=int(port),
                    ctrl_port=ctrl_port, aor=aor.group(1))
    tone = write_tone(bdir / "tone.wav", 440.0)
    baresip_config(phone, dns=("0.0.0.0", 0), tone=tone)
    keys = {line.split(None, 1)[0] for line in config_lines} | {"net_interface"}
    harness = [line for line in (bdir / "config").read_text().splitlines()
               if line.split(None, 1)[0] not in keys]
    (bdir / "config").write_text("\n".join([*harness, *config_lines]) + "\n")
    (bdir / "accounts").write_text(account + ";answermode=auto;audio_codecs=PCMU\n")
    phones[key] = phone
    phone.start(binary)


def _start_linphonec(tmp: Path, phones: dict[str, Any], binary: str) -> None:
    """linphonec: the shell lines, the command, then what is typed at its prompt."""
    home = tmp / "linphonec-home"
    home.mkdir()
    lines = recipe("linphonec")
    env = user_env(HOME=str(home), TERM="dumb")
    command = next(line for line in lines if line.startswith("linphonec "))
    for line in lines[:lines.index(command)]:
        run(["bash", "-c", line], cwd=home, env=env)
    argv = shlex.split(command.replace("~/", f"{home}/"))  # as the shell would, HOME=home
    proc = subprocess.Popen([binary, *argv[1:], "-d", "0", "-a"], cwd=home,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    linphonec = Linphonec(home, proc)
    phones["linphonec"] = linphonec
    threading.Thread(target=linphonec._read, daemon=True).start()
    linphonec.send("soundcard use files")
    linphonec.send(f"play {write_tone(home / 'tone.wav', 880.0)}")
    linphonec.send(f"record {home / 'heard.wav'}")
    for line in lines[lines.index(command) + 1:]:
        assert line.startswith("linphonec> "), line
        linphonec.send(line.removeprefix("linphonec> "))


def test_baresip_recipe_registers_through_dc1(
    user_lab: dict[str, Any], recipe_phones: dict[str, Any],
) -> None:
    recipe_phones["baresip"].wait_registered()
    binding = wait_for("baresip's binding", lambda: proxy_binding(
        user_lab, "1001@cluster.lab", "baresip"))
    assert binding["origin"] in dc1_proxies(user_lab), binding


def test_baresip_recipe_in_dc2_registers_through_dc2(
    user_lab: dict[str, Any], recipe_phones: dict[str, Any],
) -> None:
    """Its resolver sends from 127.0.0.1; the DNS answers by the address it asked."""
    recipe_phones["baresip-dc2"].wait_registered()
    binding = wait_for("the DC2 baresip's binding", lambda: proxy_binding(
        user_lab, "1002@cluster.lab", "baresip"))
    dc2 = {p["name"] for p in user_lab["data_centres"]["dc2"]["proxies"]}
    assert binding["origin"] in dc2, binding


def test_linphonec_recipe_registers_through_the_named_proxy(
    user_lab: dict[str, Any], recipe_phones: dict[str, Any],
) -> None:
    recipe_phones["linphonec"].wait_registered()
    binding = wait_for("linphonec's binding", lambda: proxy_binding(
        user_lab, "1003@cluster.lab", "Linphone"))
    named = re.search(r"sip:([\d.]+):(\d+)", recipe("linphonec")[-1])
    assert named is not None
    proxy = next(p for p in user_lab["data_centres"]["dc1"]["proxies"]
                 if p["host"] == named.group(1))
    assert binding["origin"] == proxy["name"], binding


def test_baresip_calls_linphonec(recipe_phones: dict[str, Any]) -> None:
    """The README's `/dial 1003`: the call connects on both phones and hangs up."""
    baresip, linphonec = recipe_phones["baresip"], recipe_phones["linphonec"]
    mark_b, mark_l = baresip.mark(), linphonec.mark()
    baresip.dial("sip:1003@cluster.lab")
    baresip.wait_event("CALL_ESTABLISHED", after=mark_b)
    linphonec.wait_for(r"[Cc]all .* connected", after=mark_l)
    baresip.hangup()
    baresip.wait_event("CALL_CLOSED", after=mark_b)
    linphonec.wait_for(r"[Cc]all .* ended", after=mark_l)


def test_generic_recipe_with_sipsak_and_sipp(
    user_lab: dict[str, Any], walk: Walk, tmp_path: Path,
) -> None:
    from tests.conftest import require_tool  # type: ignore[import-not-found]

    (line,) = recipe("sipsak")
    run([require_tool("sipsak"), *shlex.split(line)[1:]], cwd=tmp_path, env=user_env())
    settings = generic_settings()
    proxy = settings["outbound proxy"]
    binding = wait_for("sipsak's binding", lambda: proxy_binding(
        user_lab, f"{settings['user and auth user']}@{settings['domain / registrar']}",
        "sipsak"))
    host = proxy.rsplit(":", 1)[0]
    assert binding["origin"] == next(p["name"] for p in user_lab["data_centres"]["dc1"]["proxies"]
                                     if p["host"] == host)
    scenario = ROOT / "tests" / "interop" / "lab" / "scenarios" / "lab_register.xml"
    sipp = subprocess.run(
        [require_tool("sipp"), proxy, "-sf", str(scenario), "-i", "127.0.1.104", "-m", "1",
         "-nostdin", "-timeout", "15s", "-timeout_error", "-trace_err",
         "-s", settings["user and auth user"], "-au", settings["user and auth user"],
         "-ap", settings["password"], "-set", "domain", settings["domain / registrar"],
         "-set", "expires", "60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=user_env(TERM="dumb"))
    errors = "".join(p.read_text() for p in tmp_path.glob("*errors.log"))
    assert sipp.returncode == 0, f"SIPp failed:\n{sipp.stdout[-2000:]}\n{errors}"


def test_lab_stop_leaves_no_process(user_lab: dict[str, Any], walk: Walk) -> None:
    lab_dir = walk.elsewhere / "lab"
    pids = list(json.loads((lab_dir / "pids.json").read_text()).values())
    assert pids
    run([str(walk.sipcluster), "lab", "stop", "--dir", str(lab_dir)], cwd=walk.elsewhere,
        env=user_env())
    assert pids_alive(pids) == []
    assert processes_mentioning(str(lab_dir)) == []
    # lab.json says so: the tools that default to it no longer ask a stopped DNS
    stopped = json.loads((lab_dir / "lab.json").read_text())
    assert stopped["dns"] is None
    assert not any(p["running"] for c in stopped["data_centres"].values()
                   for p in [*c["proxies"], *c["nodes"]])


def test_make_lab_runs_until_ctrl_c(walk: Walk) -> None:
    """`make lab` in the clone: up, every daemon healthy, Ctrl-C stops all of it."""
    proc = subprocess.Popen(["make", "lab"], cwd=walk.clone, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=user_env(),
                            start_new_session=True)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "Ctrl-C stops the lab" in line:
                ready.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    lab_dir = walk.clone / "lab-run"
    try:
        assert ready.wait(120), "make lab did not come up:\n" + "".join(output)
        lab = assert_all_healthy(lab_dir, walk.sipcluster, walk.elsewhere)
        assert lab["dns"] is not None and lab["srv_fqdn"] == "spx-srv.cluster.lab"
        pids = list(json.loads((lab_dir / "pids.json").read_text()).values())
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        proc.wait(timeout=60)
        reader.join(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run([str(walk.sipcluster), "lab", "stop", "--dir", str(lab_dir)],
                           capture_output=True, timeout=120)
    assert "lab stopped" in "".join(output), "".join(output)
    assert pids_alive(pids) == []
    assert processes_mentioning(str(lab_dir)) == []


def test_pip_install_of_the_project(walk: Walk, tmp_path: Path) -> None:
    """A plain `pip install` of the project into a new virtual environment: the
    wheel carries the compiled stack and the lab's cluster file."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run([str(venv / "bin" / "pip"), "install", "-q", str(walk.clone)], cwd=tmp_path,
        timeout=900, env=user_env())
    probe = run([str(venv / "bin" / "python"), "-c",
                 "import protocols.sip as s, protocols.sip.transaction as t, "
                 "daemons.sip_proxy as p, daemons.sip_proxy.proxy as c; "
                 "print(s.COMPILED, t.__file__, p.COMPILED, c.__file__)"],
                cwd=tmp_path, env=user_env())
    compiled, module_file, proxy_compiled, proxy_file = probe.stdout.split()
    assert compiled == "True" and module_file.startswith(str(venv)), probe.stdout
    # the proxy's core too, though pip builds where the project's dependencies
    # are not installed (setup.py types them as Any then)
    assert proxy_compiled == "True" and proxy_file.startswith(str(venv)), probe.stdout
    assert proxy_file.endswith(".so"), probe.stdout
    sipcluster = venv / "bin" / "sipcluster"
    lab_dir = tmp_path / "lab"
    run([str(sipcluster), "lab", "start", "--dir", str(lab_dir)], cwd=tmp_path, env=user_env())
    try:
        assert_all_healthy(lab_dir, sipcluster, tmp_path)
    finally:
        run([str(sipcluster), "lab", "stop", "--dir", str(lab_dir)], cwd=tmp_path,
            env=user_env())
    assert processes_mentioning(str(lab_dir)) == []
