"""Benchmarks: timing loops over runners, latency statistics, the environment, and the physical floor."""
