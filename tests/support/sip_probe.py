"""A phone's liveness probe of a SIP target: one OPTIONS over UDP (RFC 3261 §11),
for tests and benches that pick an SRV target the way a phone does."""

from __future__ import annotations

import os
import socket


def answers_options(address: str, target: tuple[str, int], timeout: float = 0.5) -> bool:
    """One OPTIONS from ``address`` to ``target``; True when any response comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        tag = os.urandom(4).hex()
        msg = (f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {address}:{port};branch=z9hG4bK{tag};rport\r\n"
               f"From: <sip:probe@{address}>;tag={tag}\r\nTo: <sip:{target[0]}:{target[1]}>\r\n"
               f"Call-ID: probe-{tag}@{address}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n")
        try:
            sock.sendto(msg.encode(), target)
            data, _ = sock.recvfrom(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")
