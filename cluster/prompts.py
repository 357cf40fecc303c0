"""Token ids for a workload's prompts: a real engine needs ids, a workload gives only
lengths. Each request's ids are drawn from a generator seeded by (seed, request id), so
every worker that prefills or re-prefills a request computes the same prompt."""
from __future__ import annotations

import numpy as np


def prompt_ids(request_id: int, length: int, vocab_size: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng([seed, request_id])
    return rng.integers(1, vocab_size, length).tolist()
