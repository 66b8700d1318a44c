"""Benchmarks, run from the repository root as `python -m bench.<name>`; results go to docs/benchmarks.md."""
