"""Latency measurement: interleaved rounds of competing paths, best and median times."""
