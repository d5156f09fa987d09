"""Operator and evaluation tools, run as modules from the repository root: `python -m tools.evaluate`."""
