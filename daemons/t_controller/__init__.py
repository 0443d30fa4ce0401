"""The T-Controller beside each cluster node: DN ownership, the agent state
machine and the T-Library interface for desktops and smart clients
(SIP Cluster Solution Guide, "T-Controller", "T-Controller DN Ownership")."""
