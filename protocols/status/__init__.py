"""The status-aggregator protocol (docs/status-aggregator.md): framing,
messages, the session state machine and the status table, sans-I/O."""
