"""Benchmarks run as ``python -m benchmarks.<name>``; each prints its measured figures, last line one JSON object."""
