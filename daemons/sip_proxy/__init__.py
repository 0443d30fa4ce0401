"""The sip-proxy daemon: the SIP edge of a data centre (docs/sip-proxy.md)."""
