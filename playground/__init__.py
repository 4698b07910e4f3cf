"""Phi Playground: one prompt, many models and backends, streamed side by side."""

__version__ = "0.1.0"
