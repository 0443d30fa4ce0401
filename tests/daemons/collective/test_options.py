"""The site configuration: the guide's names read from the cluster file, and
a bad one refused with file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemons.cluster.config import load_cluster
from daemons.collective.options import read_options
from daemons.runtime.config import ConfigError
from tests.daemons.collective.conftest import site_cluster
from tests.daemons.rtm_server.conftest import HubSpec

HUB = HubSpec("RTM1", "127.0.210.10", 7500, 9060)


def _options(path: Path):  # type: ignore[no-untyped-def]
    config = load_cluster(path)
    return read_options(config, config.applications["Collective_Boca"])


def test_site_configuration_with_the_guides_names(tmp_path: Path) -> None:
    options = _options(site_cluster(tmp_path, 1, HUB, http_port=9070))
    assert (options.home.site_id, options.home.name, options.home.phone_number) == \
        (1, "Boca", "5615550100")
    assert options.note_id_dial_string_digits == "*90"
    assert sorted(options.peers) == [2, 3]
    indy = options.peers[2]
    assert (indy.name, indy.password, indy.use_note_id_dial_string) == \
        ("Indy", "Indy-Secret", False)
    assert indy.trusted_access.to_map() == {"publish-handlers": True,
                                            "manage-handlers": False,
                                            "master-administrator": False}
    assert options.hubs == (("127.0.210.10", 7500),)
    assert options.spanning_workgroups == frozenset({"Multisite_RTM1"})


@pytest.mark.parametrize(("edit", "key", "reason"), [
    (('site-identifier = 1', 'site-identifier = 1000'), "home-site.site-identifier",
     "between 1 and 999"),
    (('site-identifier = 2', 'site-identifier = 1'), "peer-sites.Indy.site-identifier",
     "home site's identifier"),
    (('password = "Indy-Secret"', 'password = ""'), "peer-sites.Indy.password",
     "needs its password"),
    (('phone-number = "5615550100"', 'phone-number = "call me"'), "home-site.phone-number",
     "expected digits"),
    (('[applications.Collective_Boca.options.home-site]',
      '[applications.Collective_Boca.options.home-site]\nnote-id-dial-string-digits = "*9x"'),
     "note-id-dial-string-digits", "0-9 * #"),
    (('master-administrator = false', 'master-admin = false'), "trusted-access.master-admin",
     "unknown option"),
    (('hubs = ["127.0.210.10:7500"]', 'hubs = ["SIPS_Boca"]'), "options.hubs",
     "not an rtm-server"),
    (('hubs = ["127.0.210.10:7500"]', 'hubs = []'), "options.hubs", "name the rtm-server"),
])
def test_bad_configuration_is_refused_with_the_reason(
        tmp_path: Path, edit: tuple[str, str], key: str, reason: str) -> None:
    path = site_cluster(tmp_path, 1, HUB, http_port=9070)
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as caught:
        _options(path)
    assert key in str(caught.value) and reason in str(caught.value)


def test_the_daemon_refuses_a_bad_configuration_in_one_line(tmp_path: Path) -> None:
    path = site_cluster(tmp_path, 1, HUB, http_port=9070)
    path.write_text(path.read_text().replace('password = "Boca-Secret"', 'password = ""', 1))
    out = subprocess.run([sys.executable, "-m", "daemons.cli", "collective", "--config",
                          str(path), "--name", "Collective_Boca"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"collective: {path}: applications.Collective_Boca.options.home-site.password: "
        "a site needs a password (case-sensitive)")
