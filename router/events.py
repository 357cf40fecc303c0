"""The events at which a runtime asks the router to decide: `Snapshot.event`, and
what a policy lists in `Policy.events` to be called even when no request awaits it."""
from __future__ import annotations

ARRIVAL = "arrival"
"""A request arrived: it waits in `to_dispatch`."""
PREFILL_DONE = "prefill_done"
"""A prefill finished: the request waits in `to_hand_off`."""
HANDOFF_DONE = "handoff_done"
"""A request's KV reached its decode instance."""
HANDOFF_FAILED = "handoff_failed"
"""A KV hand-off failed (transport, timeout, a worker gone): the request waits in
`to_hand_off` again, or in `to_dispatch` when its prefill instance is gone."""
FINISHED = "finished"
"""A request finished."""
TICK = "tick"
"""The periodic call, every `router.tick_s`."""
FAULT = "fault"
"""An instance failed; the requests it held wait in `to_dispatch`."""
STORED = "stored"
"""A parked request's KV reached host memory: the GPU blocks it held are free."""
PREEMPTING = "preempting"
"""An engine is out of KV blocks and asks `Policy.choose_victim` whom to stop."""

EVENTS = (ARRIVAL, PREFILL_DONE, HANDOFF_DONE, HANDOFF_FAILED, FINISHED, TICK, FAULT, STORED, PREEMPTING)
