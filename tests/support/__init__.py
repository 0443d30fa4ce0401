"""Helpers shared by several test directories (real servers the tests start)."""
