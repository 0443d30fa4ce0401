"""rtm-server: the hub that links the sites of a collective (docs/rtm-server.md)."""
