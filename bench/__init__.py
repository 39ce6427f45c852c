"""Benchmarks: `python -m bench` runs every workload and writes docs/benchmarks.md."""
