"""The sip-server daemon: a cluster node\x27s Session Controller and Interaction Proxy."""
