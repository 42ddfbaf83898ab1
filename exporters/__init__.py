"""Exporters: where converted metrics go."""
