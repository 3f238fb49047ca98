"""Benchmarks (`make bench`): each measures our path and a baseline in the same run."""
