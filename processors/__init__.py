"""Processors: transforms over a tick batch."""
