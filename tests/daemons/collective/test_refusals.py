"""What a site refuses: a wrong password or an unknown site identifier at the
hub, a peer whose password is wrong (Check Site), messages from a site that
is no peer, messages of the wrong form, bad API input."""

from __future__ import annotations

import subprocess
import sys

from tests.daemons.collective.conftest import PASSWORDS, Collective, until


def _refused(site: object) -> str | None:
    code, body = site.health()  # type: ignore[attr-defined]
    if code != 503:
        return None
    return body["checks"]["collective"]["hub_refused"]  # type: ignore[no-any-return]


def test_wrong_password_and_unknown_site_are_refused(collective: Collective) -> None:
    lyon = collective.sites[3]
    assert lyon.stop() == 0
    lyon = collective.start_site(3, wait=False, password="lyon-secret")  # case-sensitive
    reason = until(lambda: _refused(lyon), 20.0, "wrong password not refused", alive=lyon)
    assert reason.startswith("auth-failed")
    assert lyon.get("/status")["hub"]["connected"] is False
    assert lyon.stop() == 0
    lyon = collective.start_site(3, wait=False, home_id=9)
    reason = until(lambda: _refused(lyon), 20.0, "unknown site not refused", alive=lyon)
    assert reason.startswith("auth-failed")
    assert lyon.stop() == 0
    collective.start_site(3)


def test_check_site_reports_a_wrong_peer_password(collective: Collective) -> None:
    indy = collective.sites[2]
    assert indy.stop() == 0
    indy = collective.start_site(2, peer_passwords={1: "not-Boca's"})
    checks = until(lambda: len(c := {p["site-identifier"]: p["check"]
                                     for p in indy.get("/status")["peer_sites"]
                                     if p["check"]}) == 2 and c)
    assert checks[1]["result"] == "refused" and checks[1]["ok"] is False
    assert checks[3]["result"] == "ok"
    line = [e for e in indy.log_events("collective_check_site") if e["peer"] == 1][-1]
    assert line["result"] == "refused"
    assert indy.stop() == 0
    collective.start_site(2)


def test_messages_from_a_site_that_is_no_peer_are_refused(collective: Collective) -> None:
    boca = collective.sites[1]
    before = boca.metric("sipcluster_collective_messages_refused_total", reason="unknown-site")
    out = subprocess.run(
        [sys.executable, "-m", "daemons.cli", "rtm", "send", "--config",
         str(collective.root / "hub.toml"), "--site", "4", "--password", PASSWORDS[4],
         "--state", str(collective.root / "site4"), "--to", "1", "--object", "Collective",
         "--event", "UserDeleted", "-s", "ann"],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    until(lambda: boca.metric("sipcluster_collective_messages_refused_total",
                              reason="unknown-site") > before,
          message="message from site 4 not refused")
    line = boca.log_events("collective_message_refused")[-1]
    assert (line["origin"], line["reason"]) == (4, "unknown-site")
    assert boca.health()[0] == 200


def test_bad_api_input_is_refused(collective: Collective) -> None:
    boca = collective.sites[1]
    assert boca.http("PUT", "/users/x", {"name": "X"})[0] == 400  # no extension
    assert boca.http("PUT", "/users/x", {"name": "X", "extension": "1",
                                         "workgroups": "Multisite_RTM1"})[0] == 400
    assert boca.http("PUT", "/users/x", [1, 2])[0] == 400
    assert boca.http("GET", "/directory/boca/x")[0] == 400
    assert boca.metric("sipcluster_collective_api_refused_total", reason="bad-user") >= 3
    assert boca.health()[0] == 200
