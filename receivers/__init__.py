"""Receivers: the sources of energy and usage data."""
