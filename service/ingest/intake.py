"""The bounded hand-over list between intake threads (MQTT, HTTP) and the writer thread."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class Intake(Generic[T]):
    """A bounded hand-over list between intake threads and the writer.

    Cheaper than ``queue.Queue`` (one lock, no notify per item): the writer is woken only
    when the list goes from empty to non-empty and otherwise polls while it fills a batch.
    ``put`` blocks while ``max_items`` are waiting: that is the backpressure.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max(1, max_items)
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)

    def put(self, item: T, timeout_s: float) -> bool:
        with self._lock:
            if len(self._items) >= self.max_items:
                deadline = time.monotonic() + timeout_s
                while len(self._items) >= self.max_items:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._not_full.wait(left)
            self._items.append(item)
            if len(self._items) == 1:
                self._not_empty.notify()
        return True

    def take(self, wait_s: float = 0.0) -> list[T]:
        with self._lock:
            if not self._items and wait_s > 0:
                self._not_empty.wait(wait_s)
            items, self._items = self._items, []
            if items:
                self._not_full.notify_all()
        return items

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items
