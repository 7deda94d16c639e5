"""Benchmarks: scripts that print numbers and write them to JSON files beside them."""
