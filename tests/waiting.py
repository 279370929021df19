"""Polling helpers for tests that wait on servers, threads or processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(pred: Callable[[], T], timeout: float = 30.0, every: float = 0.2) -> T:
    """Call ``pred`` until it returns something truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


def wait_until(pred: Callable[[], object], timeout: float = 20.0, every: float = 0.05,
               what: str = "condition") -> None:
    """Like ``poll``, but fail the test with ``what`` when the condition is not reached."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
