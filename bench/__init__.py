"""Benchmarks (`make bench`): each measures its baseline in the same run on the same machine and
prints ours/baseline. Not tests: nothing here asserts a time."""
