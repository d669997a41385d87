"""Pure renderers: spec in, Kubernetes objects out. No I/O, no clock, no randomness."""
