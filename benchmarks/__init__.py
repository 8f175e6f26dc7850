"""Benchmarks: shared harness (timing, memory, result rows, plots) and one script per benchmark."""
