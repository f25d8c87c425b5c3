"""Speed measurements of the detector package, run by tools/benchmark.py (outside the package)."""
