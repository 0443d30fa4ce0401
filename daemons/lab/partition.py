"""Cut and restore every link between two data centres of the loopback lab.

Linux routes all of 127/8 through ``lo``, so a cut is an nftables rule set on
the output hook that drops packets from one data centre's /24 to the other's,
both ways: SIP, T-Library and replication alike. The daemons bind their own
host address for outgoing traffic, so the source address says which data
centre a packet comes from. Needs root (CAP_NET_ADMIN) and ``nft``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from pathlib import Path


class PartitionError(RuntimeError):
    """nftables is missing or refused the rule set."""


def table_name(lab_dir: Path) -> str:
    """One nftables table per lab directory, so two labs do not disturb each other."""
    digest = hashlib.sha1(str(lab_dir.resolve()).encode()).hexdigest()[:8]
    return f"sipcluster_lab_{digest}"


def subnet_of(hosts: list[str]) -> ipaddress.IPv4Network:
    """The /24 holding a data centre's hosts."""
    if not hosts:
        raise PartitionError("data centre has no hosts")
    return ipaddress.ip_network(f"{hosts[0]}/24", strict=False)  # type: ignore[return-value]


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise PartitionError("nft is not installed (apt-get install nftables)")
    proc = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PartitionError(f"nft refused the rules: {proc.stderr.strip()}")


def partition(lab_dir: Path, a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> None:
    """Drop every packet between subnets ``a`` and ``b`` (added to existing cuts)."""
    table = table_name(lab_dir)
    _nft(
        f"table ip {table} {{\n"
        f"  chain output {{ type filter hook output priority 0; policy accept; }}\n"
        f"}}\n"
        f"add rule ip {table} output ip saddr {a} ip daddr {b} counter drop\n"
        f"add rule ip {table} output ip saddr {b} ip daddr {a} counter drop\n"
    )


def heal(lab_dir: Path) -> bool:
    """Remove every cut of this lab; False when there was none."""
    table = table_name(lab_dir)
    nft = shutil.which("nft")
    if nft is None:
        raise PartitionError("nft is not installed (apt-get install nftables)")
    listed = subprocess.run([nft, "list", "table", "ip", table], capture_output=True, text=True)
    if listed.returncode != 0:
        return False
    _nft(f"delete table ip {table}\n")
    return True


def is_partitioned(lab_dir: Path) -> bool:
    nft = shutil.which("nft")
    if nft is None:
        return False
    listed = subprocess.run(
        [nft, "list", "table", "ip", table_name(lab_dir)], capture_output=True, text=True
    )
    return listed.returncode == 0 and "drop" in listed.stdout
