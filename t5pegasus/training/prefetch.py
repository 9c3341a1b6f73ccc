"""Batches made ahead on a background thread, so loading and host-to-device copies hide behind the steps.

`Prefetcher(produce, depth)` calls `produce()` on its own thread and keeps at most `depth` results waiting
(bounded memory: with batches put on the devices, `depth` batches beyond the one in use). The consumer's
`next()` returns them in order and adds the seconds it spent blocked to `waited`; an exception in `produce` is
re-raised as itself in the consumer (a `UserError` stays one), `StopIteration` ends the stream, and `close()`
stops the thread and drops what it made ahead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = "item", "end", "error"


class Prefetcher(Generic[T]):
    """An iterator over `produce()` results made up to `depth` ahead on a daemon thread."""

    def __init__(self, produce: Callable[[], T], depth: int = 2, name: str = "t5pegasus-prefetch") -> None:
        if depth < 1:
            raise ValueError("prefetch depth must be at least 1")
        self.waited = 0.0  # seconds `__next__` waited for the producer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[], T]) -> None:
        while not self._stop.is_set():
            try:
                item = (_ITEM, produce())
            except StopIteration:
                item = (_END, None)
            except BaseException as e:  # re-raised in the consumer
                item = (_ERROR, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] != _ITEM:
                return

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        while True:
            try:
                kind, value = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError("the batch producer thread stopped without a result") from None
        self.waited += time.perf_counter() - start
        if kind == _ITEM:
            return value
        self._finished = True
        if kind == _END:
            raise StopIteration
        raise value

    def close(self, timeout: float = 30.0) -> None:
        """Stop the producer (after the item it is making) and drop the items made ahead."""
        self._stop.set()
        self._finished = True
        while self._thread.is_alive() or not self._queue.empty():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
            timeout -= 0.05
            if timeout <= 0:
                break

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
