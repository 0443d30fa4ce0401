"""The feature-server daemon: dial plan, trunks and provisioning (docs/feature-server.md)."""
