"""Read-ahead: decode data chunks in a background thread, a bounded number of rows ahead of the caller.

The thread overlaps file reading and decoding (pyarrow releases the GIL) with the caller's forward
passes; `ReadAhead(rows)` is the option, `read_ahead_chunks` the bounded producer/consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

__all__ = ["ReadAhead", "read_ahead_chunks"]


@dataclass
class ReadAhead:
    """Decode chunks in a background thread, at most `rows` decoded rows ahead of the consumer.

    The thread overlaps file reading and decoding (pyarrow releases the GIL) with the caller's
    forward passes. `rows` bounds the rows decoded and not yet handed out; it is raised to one
    chunk if smaller (a chunk is the unit of decoding). `peak` is the measured high-water mark of
    those rows (set while iterating; compare it with `rows`).
    """

    rows: int
    peak: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"read-ahead must be at least one row, got {self.rows}")


_DONE = object()


def read_ahead_chunks(
    chunks: Iterator[pd.DataFrame], batch_size: int, meter: ReadAhead
) -> Iterator[pd.DataFrame]:
    """`chunks` (each at most `batch_size` rows), produced by a background thread that holds at most
    `max(meter.rows, batch_size)` decoded rows not yet handed out.

    The thread reserves `batch_size` rows before decoding the next chunk, so decoded-but-unconsumed
    rows never exceed the limit; `meter.peak` records the most rows held at once. An error in the
    thread is raised here; closing this generator stops the thread.
    """
    limit = max(meter.rows, batch_size)
    cond = threading.Condition()
    held = 0  # rows decoded (or being decoded: reserved) and not yet handed out
    stop = threading.Event()
    ready: queue.SimpleQueue = queue.SimpleQueue()
    meter.peak = 0

    def produce() -> None:
        nonlocal held
        try:
            while True:
                with cond:
                    while held + batch_size > limit and not stop.is_set():
                        cond.wait()
                    if stop.is_set():
                        return
                    held += batch_size
                chunk = next(chunks, _DONE)
                with cond:
                    n = 0 if chunk is _DONE else len(chunk)
                    held += n - batch_size
                    meter.peak = max(meter.peak, held)
                ready.put(chunk)
                if chunk is _DONE:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    thread = threading.Thread(target=produce, name="mmoe-inspect-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            with cond:
                held -= len(item)
                cond.notify()
            yield item
    finally:
        stop.set()
        with cond:
            cond.notify()
        thread.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
