"""The cluster model shared by every daemon of a SIP Cluster: the one
configuration file (switch, DNs, applications) they all read."""
