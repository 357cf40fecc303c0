"""What a runtime does for the control plane (`cluster.core.control`): the hooks in
which the simulator and the live cluster really differ. Each returns at once; what
completes later is reported back to the control plane: `copied` when KV arrived (or
failed to), `preempt_done` and `detach_done` when a request left its batch at a step
boundary (or was no longer decoding there)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from cluster.core.request import Request


class Runtime:
    staged_kv: bool = True
    """A decoding request's KV can be copied in stages while it decodes (else a live
    migration stops it and moves its KV in one stage)."""
    victim_at_need: bool = False
    """Its engines ask the control plane for a victim when they run out of KV (else the
    control plane tells them its choice after each decision)."""

    def now(self) -> float:
        raise NotImplementedError

    def fresh(self, requests: list[Request]) -> None:
        """Bring the SLO state of these requests (`ControlPlane.views.slo`) up to now: a
        runtime that feeds every token as it comes has nothing to do."""

    def busy(self) -> Iterable[int]:
        """The instances with requests decoding."""
        raise NotImplementedError

    def decoding(self, instance: int) -> np.ndarray:
        """The slots of the requests decoding on `instance`, their SLO state brought up to now."""
        raise NotImplementedError

    def context_of(self, request: Request) -> int:
        """Tokens of KV the request holds now."""
        raise NotImplementedError

    def place(self, request: Request, state: str, instance: int) -> None:
        request.state, request.instance = state, instance

    def enqueue(self, request: Request, instance: int) -> None:
        """Queue the request for prefill on `instance` (with what it already generated)."""
        raise NotImplementedError

    def decode_here(self, request: Request) -> None:
        """A prefilled request decodes on the instance that prefilled it."""
        raise NotImplementedError

    def reserve(self, request: Request, instance: int, blocks: int) -> bool:
        """Set KV blocks aside on `instance` for the request's incoming KV; False if they
        are not free."""
        raise NotImplementedError

    def cancel(self, request: Request, instance: int, blocks: int) -> None:
        """Free the `blocks` reserved on `instance` for KV that will not come."""
        raise NotImplementedError

    def copy_kv(self, request: Request, source: int, target: int, first: int, tokens: int, final: bool,
                move: int) -> None:
        """Copy tokens [first, first + tokens) of the request's KV from `source` to `target`;
        with `final`, the target then holds all of it. Completes with `copied(request, move, reason)`."""
        raise NotImplementedError

    def admit(self, request: Request, instance: int, blocks: int) -> None:
        """The request's KV is on `instance` (in `blocks` reserved there): it decodes there."""
        raise NotImplementedError

    def release(self, request: Request, instance: int) -> None:
        """The request's KV left `instance`: free its blocks there."""
        raise NotImplementedError

    def preempt(self, request: Request, mode: str) -> None:
        """At the next step boundary, stop the request and free its KV (`recompute`) or
        move it to host memory (`swap`). Completes with `preempt_done(request, bytes)`."""
        raise NotImplementedError

    def detach(self, request: Request, keep_kv: bool) -> None:
        """At the next step boundary, take the request out of its batch, keeping its KV
        for a last copy or not. Completes with `detach_done(request, context)`."""
        raise NotImplementedError

    def reattach(self, request: Request, instance: int) -> None:
        """A detached request carries on decoding where it was."""
        raise NotImplementedError

    def resume(self, request: Request, instance: int) -> None:
        """A preempted request carries on where it was preempted (swapped in, or re-prefilled)."""
        raise NotImplementedError

    def drop(self, request: Request, instance: int) -> None:
        """Forget whatever `instance` holds of the request."""
        raise NotImplementedError

    def changed(self, *instances: int) -> None:
        """What these instances hold changed: let them react."""

    def prefer_victim(self, instance: int, request_id: int | None) -> None:
        """The request `instance`'s engine preempts first when it runs out of KV."""

    def ended(self, request: Request) -> None:
        """The request ended (finished, rejected or aborted)."""
