"""Benchmarks run by ``scripts/benchmark.py``: each module defines ``run(args) -> list[dict]``."""
