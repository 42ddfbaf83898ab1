"""otel-kepler: per-node energy agent."""

__version__ = "0.1.0"
