"""The benchmark suite behind `make bench`: see docs/benchmarks.md for what it measures."""
