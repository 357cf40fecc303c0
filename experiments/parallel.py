"""Work spread over processes, interruptible: Ctrl-C reaches the whole process group,
so the worker processes ignore it and the parent, which gets it, ends them (nothing
half-done is kept, no worker prints a traceback)."""
from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def unordered(function: Callable[[Any], Any], items: Iterable, jobs: int) -> Iterator[Any]:
    """`function(item)` for each item in `jobs` processes, results as they finish."""
    pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_ignore_interrupts)
    try:
        yield from pool.imap_unordered(function, items)
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.close()
        pool.join()


def in_order(function: Callable[[Any], Any], items: Iterable, jobs: int) -> list:
    """`function(item)` for each item in `jobs` processes, results in the items' order."""
    indexed = list(enumerate(items))
    results = dict(unordered(_Indexed(function), indexed, jobs))
    return [results[i] for i, _ in indexed]


class _Indexed:
    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __call__(self, pair: tuple[int, Any]) -> tuple[int, Any]:
        return pair[0], self.function(pair[1])
