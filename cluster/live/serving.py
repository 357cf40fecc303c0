"""A live cluster that serves clients: requests come in while it runs, sent from any
thread (a web server's), each request's tokens go to its `Stream` as the workers
produce them, and a request whose client left is aborted, its KV freed wherever it
was. The loop, the control plane and the run's tables are the live runtime's."""
from __future__ import annotations

import queue
import threading
from array import array
from typing import Protocol

import numpy as np

from cluster.core.request import ABORTED, FINISHED, Request
from cluster.core.setup import RunSetup
from cluster.live.driver import LiveOptions, LiveRuntime

POLL_S = 0.002
FIRST_ID = 3


class Stream(Protocol):
    """Where a served request's tokens go; called from the serving loop's thread."""

    def tokens(self, ids: list[int]) -> None: ...

    def ended(self, state: str, reason: str) -> None: ...


def made_up_token(request_id: int, index: int, vocab_size: int) -> int:
    """The id an emulated engine's token stands for: fixed by the request and position,
    never one of the tokenizer's first ids (its special tokens)."""
    return FIRST_ID + (request_id * 1_000_003 + index * 7_919) % (vocab_size - FIRST_ID)


class ServingRuntime(LiveRuntime):
    def __init__(self, setup: RunSetup, actors: list, options: LiveOptions, vocab_size: int,
                 poll_s: float = POLL_S) -> None:
        if options.speedup != 1.0:
            raise ValueError(f"ray.speedup: a server runs in real time; expected 1, got {options.speedup:g}")
        super().__init__(setup, actors, options)
        self.vocab_size, self.poll_s = vocab_size, poll_s
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.streams: dict[int, Stream] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        self.client_ids: dict[int, str] = {}
        self.closing = threading.Event()
        self.closed = False

    # ---- from any thread ------------------------------------------------------------
    def submit(self, tenant: str, prompt_ids: list[int], max_tokens: int, stream: Stream, client_id: str = "") -> int:
        """Serve a request arriving now; its id. `client_id`: the client's own name for it."""
        with self.lock:
            request_id, self.next_id = self.next_id, self.next_id + 1
            self.client_ids[request_id] = client_id
        request = Request(request_id, tenant, self.now(), len(prompt_ids), max_tokens, prompt_ids=list(prompt_ids))
        self.inbox.put((request, stream))
        return request_id

    def cancel(self, request_id: int, reason: str = "client disconnected") -> None:
        self.inbox.put((request_id, reason))

    def close(self) -> None:
        """Stop serving: requests not done are aborted, and the loop returns its tables."""
        self.closing.set()

    # ---- the loop's hooks -------------------------------------------------------------
    def serving(self) -> bool:
        return not self.closed

    def arrive(self, now: float) -> None:
        while True:
            try:
                item, value = self.inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Request):
                self._add(item, value)
            elif item in self.requests:
                self.control.abort(self.requests[item], value)
        if self.closing.is_set() and not self.closed:
            for request in list(self.requests.values()):
                self.control.abort(request, "server stopped")
            self.closed = True

    def _add(self, request: Request, stream: Stream) -> None:
        self.times[request.id] = array("d")
        self.streams[request.id] = stream
        try:
            self.control.add(request)
        except ValueError as exc:
            del self.times[request.id]
            self.streams.pop(request.id).ended(ABORTED, str(exc))

    def next_arrival_s(self) -> float:
        return np.inf if self.closed else self.now() + self.poll_s

    def delivered(self, request_ids: list[int]) -> None:
        for request_id in request_ids:
            stream = self.streams.get(request_id)
            if stream is None:
                continue
            request, index = self.requests[request_id], len(self.times[request_id])
            if len(request.output) < index:
                request.output.append(made_up_token(request_id, index, self.vocab_size))
            stream.tokens([request.output[index - 1]])

    def ended(self, request: Request) -> None:
        super().ended(request)
        stream = self.streams.pop(request.id, None)
        if stream is not None:
            stream.ended(request.state, request.reason if request.state != FINISHED else "")
