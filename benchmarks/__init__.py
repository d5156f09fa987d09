"""Benchmarks of the installed service, run as modules from the repository root: `python -m benchmarks.bench`."""
