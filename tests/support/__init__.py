"""Servers and helpers the tests and benchmarks start locally."""
