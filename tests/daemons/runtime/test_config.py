"""Config loading: errors name the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemons.runtime.config import ConfigError, is_host_name, load_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_typed_getters_read_values(tmp_path: Path) -> None:
    cfg = load_file(
        write(
            tmp_path,
            """
[applications.SIPS_A1]
host = "127.0.1.10"
sip-port = 5060
oos-check = 2.5
enabled = "true"
peers = "a, b ,c"
""",
        )
    )
    app = cfg.sections("applications")["SIPS_A1"]
    assert app.get_host("host") == "127.0.1.10"
    assert app.get_port("sip-port") == 5060
    assert app.get_float("oos-check") == 2.5
    assert app.get_bool("enabled") is True
    assert app.get_str_list("peers") == ["a", "b", "c"]
    assert app.get_int("missing", 7) == 7


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[switch\nname = 1\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert "line 1" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "getter", "key", "reason"),
    [
        ('port = "x"', lambda s: s.get_port("port"), "app.port", "expected an integer"),
        ("port = 70000", lambda s: s.get_port("port"), "app.port", "between 0 and 65535"),
        ("t = true", lambda s: s.get_float("t"), "app.t", "expected a number"),
        ('b = "maybe"', lambda s: s.get_bool("b"), "app.b", "expected true or false"),
        ("h = 'a b'", lambda s: s.get_host("h"), "app.h", "IP address or host name"),
        ("h = '127.0.1.300'", lambda s: s.get_host("h"), "app.h", "got '127.0.1.300'"),
        ("a = '127.0.1.300'", lambda s: s.get_ip_address("a"), "app.a",
         "expected an IP address, got '127.0.1.300'"),
        ("a = 'node1.cluster.lab'", lambda s: s.get_ip_address("a"), "app.a",
         "expected an IP address"),
        ("", lambda s: s.get_str("name"), "app.name", "required option is missing"),
        ('m = "x"', lambda s: s.get_choice("m", ("a", "b")), "app.m", "expected one of a, b"),
    ],
)
def test_errors_name_key_and_reason(
    tmp_path: Path, text: str, getter: object, key: str, reason: str
) -> None:
    path = write(tmp_path, "[app]\n" + text + "\n")
    section = load_file(path).section("app")
    with pytest.raises(ConfigError) as info:
        getter(section)  # type: ignore[operator]
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert reason in message


def test_unknown_option_suggests_the_close_name(tmp_path: Path) -> None:
    section = load_file(write(tmp_path, "[app]\noos-chek = 1\n")).section("app")
    with pytest.raises(ConfigError) as info:
        section.check_unknown({"oos-check", "oos-force"})
    assert "app.oos-chek: unknown option (did you mean 'oos-check'?)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spx-srv.cluster.lab", True),
        ("spx-srv.cluster.lab.", True),  # fully qualified
        ("sbc1", True),
        ("1und1.de", True),  # a domain label may start with a digit
        ("127.0.1.300", False),  # the last label may not: a mistyped address
        ("127.0.1.11", False),  # an address is not a name
        ("-a.lab", False),
        ("a-.lab", False),
        ("a..lab", False),
        ("a b", False),
        ("", False),
        ("a" * 64 + ".lab", False),  # a label has at most 63 characters
    ],
)
def test_host_name_form(text: str, expected: bool) -> None:
    """RFC 3261 §25.1 hostname: what a contact may name instead of an address."""
    assert is_host_name(text) is expected
