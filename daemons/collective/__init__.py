"""One site of a multi-site collective (docs/collective.md)."""
