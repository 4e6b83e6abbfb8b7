"""Benchmarks that print tables and write their results with the device name and date."""
