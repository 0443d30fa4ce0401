"""A real OpenLDAP server (Debian ``slapd``) for the directory tests: its own
configuration and database in a temporary directory, on 127.0.130.30 and a
free port, the entries added over LDAP by its root DN."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import ldap3  # type: ignore[import-untyped]

HOST = "127.0.130.30"
BASE = "dc=cluster,dc=lab"
ROOT_DN = f"cn=admin,{BASE}"
ROOT_PASSWORD = "lab-ldap-secret"

CONFIG = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{base}"
rootdn "{root}"
rootpw {password}
directory {dir}/db
"""


def slapd_binary() -> str | None:
    return shutil.which("slapd") or (
        "/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)


class Slapd:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: asyncio.subprocess.Process | None = None
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    async def start(self, binary: str) -> None:
        (self.directory / "db").mkdir(parents=True)
        conf = self.directory / "slapd.conf"
        conf.write_text(CONFIG.format(dir=self.directory, base=BASE, root=ROOT_DN,
                                      password=ROOT_PASSWORD))
        self.proc = await asyncio.create_subprocess_exec(
            binary, "-f", str(conf), "-h", f"{self.url}/", "-d", "0",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(100):
            try:
                await asyncio.to_thread(self._bind().unbind)
                break
            except ldap3.core.exceptions.LDAPException:
                await asyncio.sleep(0.1)
        await asyncio.to_thread(self._add_base)

    def _bind(self) -> ldap3.Connection:
        return ldap3.Connection(ldap3.Server(HOST, port=self.port), ROOT_DN, ROOT_PASSWORD,
                                auto_bind=True)

    def _add_base(self) -> None:
        with self._bind() as conn:
            conn.add(BASE, ["dcObject", "organization"], {"o": "Lab", "dc": "cluster"})
            conn.add(f"ou=people,{BASE}", ["organizationalUnit"], {"ou": "people"})

    def add_user(self, uid: str, name: str, mail: str) -> None:
        with self._bind() as conn:
            ok = conn.add(f"uid={uid},ou=people,{BASE}", ["inetOrgPerson"],
                          {"cn": name, "sn": name.split()[-1], "mail": mail, "uid": uid})
            assert ok, conn.result

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
