"""status-aggregator: one view of every user's status across all sites
(docs/status-aggregator.md; guide: Status Aggregator Technical Reference)."""
