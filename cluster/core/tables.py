"""The run format's vocabulary (docs/run-format.md), owned below both its producer
(the runtimes' event log, `cluster.core.recorder`) and its readers (validation,
metrics and reports in `experiments`): the tables' columns and their types, the
request statuses, the event kinds, and the shape of an engine step."""
from __future__ import annotations

FINISHED, ABORTED, REJECTED, UNFINISHED = "finished", "aborted", "rejected", "unfinished"
STATUSES = (FINISHED, ABORTED, REJECTED, UNFINISHED)
"""A request's end: `unfinished` when the run ended first."""

STEP_SHAPE = ("prefill_tokens", "prefill_tokens_sq", "decode_batch", "decode_context")
"""What one engine iteration computed, in the iteration-time model's terms."""

REQUEST_COLUMNS = {"request_id": "id", "arrival_s": "float", "prompt_tokens": "int", "output_tokens": "int",
                   "status": "status"}
TOKEN_COLUMNS = {"request_id": "id", "index": "int", "time_s": "float"}
EVENT_COLUMNS = {"time_s": "float", "kind": "str", "request_id": "id?"}
STEP_COLUMNS = {"instance": "int", "end_s": "float", "time_s": "float", "prefill_tokens": "int",
                "prefill_tokens_sq": "float", "decode_batch": "int", "decode_context": "int"}
"""Required columns and their types ("id": int or string, "id?": also empty)."""

EVENT_KINDS = {
    "arrive": "the client submitted the request",
    "dispatch": "the router queued it for prefill on `instance`",
    "prefill_end": "its prefill finished on `instance`; it awaits its hand-off",
    "transfer_start": "its prefilled KV (`bytes`) started from `instance` to `peer`",
    "transfer_end": "that KV arrived: it decodes on `peer`",
    "transfer_abort": "that KV did not arrive (`detail`: why); it awaits a hand-off again",
    "preempt": "it stopped decoding on `instance`: by the router (`detail` recompute or swap, `bytes` swapped "
               "out, its `decision`) or by its engine out of KV (`detail` engine-recompute or engine-swap)",
    "resume": "the router put it back on `instance`",
    "migrate_start": "the router started moving it from `instance` to `peer` (`detail` live or recompute, "
                     "its `decision`)",
    "migrate_stage": "a stage of a live migration copied `bytes` of its KV",
    "migrate_end": "the migration completed: it decodes on `peer`",
    "migrate_abort": "the migration was given up (`detail`: why); it carries on on `instance`",
    "vetoed": "a move the router decided (`decision`, `detail` its kind) was dropped, for a counterfactual",
    "finish": "its last token was delivered",
    "reject": "the router gave it up (`detail`: why)",
    "abort": "the runtime gave it up (`detail`: why)",
    "fault": "an instance failed (`request_id` -1), or a request it held was queued again",
    "preempt_abort": "the router's preemption of it was given up (`detail`: why, e.g. host memory full; its "
                     "`decision`); it carries on decoding on `instance`",
}
