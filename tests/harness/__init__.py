"""Harnesses and benchmarks (``make bench``, ``make chaos``) and the loaders of the deployment checks: scripts
that drive the whole system and print figures, kept apart from the test modules that assert on it."""
