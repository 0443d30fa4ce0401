"""Operators' command-line tools (``sipcluster sip lint``, ``sipcluster tlib`` ...)."""
