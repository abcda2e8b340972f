"""Orchestration only: the order workflow and its messages. No I/O, no wall clock, no randomness."""
