"""Metrics, benchmarks and paper tables (no Lightning)."""
