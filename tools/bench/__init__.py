"""Benchmarks: measured numbers, never asserted timers."""
