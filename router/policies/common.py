"""What several policies share: predicted waits, KV room, and the requests on each instance."""
from __future__ import annotations

from collections import defaultdict

from router.snapshot import PREFILL, Instances, RequestView, Snapshot


def blocks_needed(request: RequestView, instances: Instances) -> int:
    return -(-max(request.context_tokens, request.prompt_tokens) // instances.block_size)


def room(instances: Instances, instance: int, taken: dict[int, int]) -> int:
    """KV blocks an instance can still take, after what this decision already gave it."""
    return int(instances.free_blocks[instance] - instances.watermark_blocks[instance]) - taken.get(instance, 0)


def first_token_s(instances: Instances, instance: int, request: RequestView, queued: dict[int, int]) -> float:
    """Predicted seconds until `request` gets its first token on prefill `instance`."""
    a, b, _ = instances.prefill_coeffs[instance]
    ahead = instances.queued_tokens[instance] + queued.get(instance, 0)
    return (a + b * ahead if ahead else 0.0) + instances.prefill_s(instance, request.prompt_tokens)


def fastest_prefill(snapshot: Snapshot, request: RequestView, queued: dict[int, int]) -> int | None:
    candidates = snapshot.instances.serving(PREFILL)
    if not candidates:
        return None
    best = min(candidates, key=lambda i: (first_token_s(snapshot.instances, i, request, queued), i))
    queued[best] = queued.get(best, 0) + request.prompt_tokens
    return best


def by_instance(requests: tuple[RequestView, ...]) -> dict[int, list[RequestView]]:
    grouped: dict[int, list[RequestView]] = defaultdict(list)
    for request in requests:
        grouped[request.instance].append(request)
    return grouped


def stays_local(snapshot: Snapshot, request: RequestView) -> bool:
    """A request prefilled on a colocated (or decode) instance decodes where it is."""
    return snapshot.instances.role[request.instance] != PREFILL
