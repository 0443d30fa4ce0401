"""Spanning workgroups through a real hub: three site processes, users added,
changed and deleted at their home site; duplicate extensions reported at
both sites; a site that was away, and a site that joins afresh."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

from tests.daemons.collective.conftest import SPANNING, Collective, until


def test_spanning_users_replicate_add_change_delete(collective: Collective) -> None:
    boca, indy, lyon = (collective.sites[s] for s in (1, 2, 3))
    added = boca.put_user("ann", "Ann Lee", "18001", [SPANNING, "Sales"])
    assert added["spanning"] is True and added["version"] == 1
    local = boca.put_user("bob", "Bob Local", "18002", ["Sales"])
    assert local["spanning"] is False
    for site in (indy, lyon):
        user = until(lambda s=site: s.users().get((1, "ann")), message="ann not replicated")
        assert (user["name"], user["extension"], user["home_site_name"]) == \
            ("Ann Lee", "18001", "Boca")
        assert user["workgroups"] == [SPANNING, "Sales"]
    # Indy trusts Boca's users to manage handlers (its peer-site entry), Lyon too
    assert indy.users()[(1, "ann")]["trusted_access"]["manage-handlers"] is True
    # a user of no spanning workgroup never leaves home
    assert (1, "bob") in boca.users()
    assert (1, "bob") not in indy.users() and (1, "bob") not in lyon.users()

    boca.put_user("ann", "Ann Lee-Smith", "18011", [SPANNING])
    for site in (indy, lyon):
        until(lambda s=site: s.users()[(1, "ann")]["extension"] == "18011",
              message="change not replicated")
        assert site.users()[(1, "ann")]["name"] == "Ann Lee-Smith"
        assert site.users()[(1, "ann")]["version"] == 2

    # Lyon's spanning user shows at Boca and Indy; then it leaves every spanning
    # workgroup: removed from the other sites, kept at home
    lyon.put_user("cleo", "Cleo Roy", "38001", [SPANNING])
    until(lambda: (3, "cleo") in boca.users() and (3, "cleo") in indy.users())
    lyon.put_user("cleo", "Cleo Roy", "38001", ["Support"])
    until(lambda: (3, "cleo") not in boca.users() and (3, "cleo") not in indy.users(),
          message="user that left the spanning workgroups still replicated")
    assert lyon.users()[(3, "cleo")]["spanning"] is False

    # a deletion removes the user everywhere
    status, _ = boca.http("DELETE", "/users/ann")
    assert status == 200
    until(lambda: all((1, "ann") not in s.users() for s in (boca, indy, lyon)),
          message="deleted user still present")
    assert boca.http("DELETE", "/users/ann")[0] == 404


def test_duplicate_extension_reported_at_both_sites(collective: Collective) -> None:
    boca, indy = collective.sites[1], collective.sites[2]
    boca.put_user("dora", "Dora Boca", "8001", [SPANNING])
    indy.put_user("dave", "Dave Indy", "8001", [SPANNING])
    for site in (boca, indy):
        dup = until(lambda s=site: [d for d in s.get("/status")["duplicate_extensions"]
                                    if d["extension"] == "8001"],
                    message=f"duplicate not reported at {site.name}")
        assert {(u["home_site"], u["id"]) for u in dup[0]["users"]} == \
            {(1, "dora"), (2, "dave")}
        assert site.metric("sipcluster_collective_duplicate_extensions_total") >= 1
        lines = until(lambda s=site: [e for e in s.log_events("collective_duplicate_extension")
                                      if e["extension"] == "8001"])
        assert lines[0]["level"] == "warning"
    # renumbering one of them (the guide's advice: 18001 / 28001) clears it
    indy.put_user("dave", "Dave Indy", "28001", [SPANNING])
    until(lambda: not [d for d in boca.get("/status")["duplicate_extensions"]
                       if d["extension"] == "8001"], message="duplicate not cleared")


def test_site_away_then_back_and_a_site_that_joins_afresh(collective: Collective) -> None:
    boca, indy, lyon = (collective.sites[s] for s in (1, 2, 3))
    boca.put_user("eve", "Eve", "18100", [SPANNING])
    boca.put_user("fay", "Fay", "18101", [SPANNING])
    until(lambda: (1, "fay") in lyon.users() and (1, "eve") in lyon.users())
    assert lyon.stop() == 0
    # while Lyon is away: an add, a change, a delete at Boca, an add at Indy
    boca.put_user("gus", "Gus", "18102", [SPANNING])
    boca.put_user("eve", "Eve Moved", "18110", [SPANNING])
    assert boca.http("DELETE", "/users/fay")[0] == 200
    indy.put_user("hal", "Hal", "28100", [SPANNING])
    lyon = collective.start_site(3)
    until(lambda: (1, "gus") in lyon.users() and (2, "hal") in lyon.users()
          and (1, "fay") not in lyon.users()
          and lyon.users()[(1, "eve")]["extension"] == "18110",
          message="Lyon did not catch up")

    # Lyon rebuilt with an empty store: it joins, and a full sync brings every
    # spanning user of Boca and Indy; its own spanning users reach them again
    assert lyon.stop() == 0
    shutil.rmtree(collective.root / "Lyon" / "state")
    lyon = collective.start_site(3)
    expected = {k for k in boca.users() if k[0] == 1 and boca.users()[k]["spanning"]}
    expected |= {k for k in indy.users() if k[0] == 2 and indy.users()[k]["spanning"]}
    until(lambda: expected <= set(lyon.users()), message="full sync did not bring every user")
    assert lyon.log_events("collective_sync_started")[-1]["reason"] == "joined"
    # the users may all be there before the second peer's full sync has ended
    until(lambda: {p["site-identifier"] for p in lyon.get("/status")["peer_sites"]
                   if p["last_sync"]} == {1, 2}, message="a full sync from each peer")

    # on demand: a copy Indy holds of a Boca user that Boca no longer has (a
    # store restored from a backup) goes at the next full sync from Boca
    assert indy.stop() == 0
    with sqlite3.connect(collective.root / "Indy" / "state" / "collective.db") as db:
        db.execute("INSERT INTO collective_users VALUES (1, 'ghost', 'Ghost', '18999', "
                   "'[\"Multisite_RTM1\"]', 1, 3, 0)")
    indy = collective.start_site(2)
    assert (1, "ghost") in indy.users()
    out = subprocess.run([sys.executable, "-m", "daemons.cli", "collective", "sync",
                          "--config", str(boca.config), "--name", "Collective_Boca"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["peers"] == [2, 3]
    assert answer["users_sent"] == sum(1 for k, u in boca.users().items()
                                       if k[0] == 1 and u["spanning"])
    until(lambda: indy.get("/status")["peer_sites"][0]["last_sync"]["generation"]
          == answer["generation"], message="sync not received at Indy")
    assert (1, "ghost") not in indy.users()
    assert (1, "gus") in indy.users()
    assert indy.get("/status")["peer_sites"][0]["last_sync"]["removed"] == 1
