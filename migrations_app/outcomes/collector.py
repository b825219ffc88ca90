"""The garbage collector paused while ingest or a fold makes many short-lived objects."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_gc_paused = False  # whether an ingest paused the collector and has not resumed it yet
_gc_lock = threading.Lock()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection while a batch (or a fold) is processed. A batch makes tens of
    thousands of short-lived tuples (a few per event and per row), each allocation counting
    towards a young-generation collection that walks them all again: ~10 ms of a batch's
    ~55 ms with segments (in-process, bench/bench_ingest.py's events). Nothing the batch makes
    is cyclic garbage that must go sooner; nor does a fold of pending rows (segment_rollup.fold:
    ~18 ms a folded batch with the collector running, ~10 without). The ingest that paused it
    resumes it; one that finds it already paused (another ingest in the same process, or
    someone else's pause)
    leaves it alone. Once resumed, the next allocation collects the young generation as
    usual, so garbage from other work is still collected between batches."""
    global _gc_paused
    with _gc_lock:
        mine = not _gc_paused and gc.isenabled()
        if mine:
            _gc_paused = True
            gc.disable()
    try:
        yield
    finally:
        if mine:
            with _gc_lock:
                _gc_paused = False
                gc.enable()
