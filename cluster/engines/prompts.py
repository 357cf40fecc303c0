"""Token ids for a workload's prompts: a real engine needs ids, a workload gives only
lengths. Each request's ids are drawn from a generator seeded by (seed, request id), so
every worker that prefills or re-prefills a request computes the same prompt."""
from __future__ import annotations

import numpy as np


def prompt_ids(request_id: int, length: int, vocab_size: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng([seed, request_id])
    return rng.integers(1, vocab_size, length).tolist()


def request_prompt(request, vocab_size: int, seed: int = 0) -> list[int]:
    """The request's prompt ids: those its client sent, else drawn as `prompt_ids`."""
    if request.prompt_ids is not None:
        return list(request.prompt_ids)
    return prompt_ids(request.id, request.prompt, vocab_size, seed)


def check_token_ids(request) -> None:
    """A request sent to a real engine carries the ids of the tokens it has (it is
    recomputed from them): one per token generated."""
    if len(request.output) != request.generated:
        raise ValueError(f"request {request.id}: {request.generated} tokens generated but {len(request.output)} "
                         f"token ids given; a real engine recomputes from the ids")
