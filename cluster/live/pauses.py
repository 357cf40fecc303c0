"""Keeping garbage collection out of the live driver's loop."""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def few_pauses():
    """The objects made before the run are left out of garbage collection while it runs: a
    full collection of them stalled the driver's loop 0.2-0.3 s (requests arriving then
    were let in that much late; a test process holds ~150,000 objects)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
