"""Benchmarks of nonsingular against its peers (not part of the test suite). Run: `make bench`."""
