"""Benchmarks run by `make bench` (`python -m bench`); see docs/benchmarks.md."""
