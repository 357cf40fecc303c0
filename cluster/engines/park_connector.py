"""Parking for vLLM on any platform: a KV connector that copies a stopped request's KV
blocks into bounded host memory and loads them back when the request is added again,
so that a park costs a copy, not a re-prefill. vLLM's own offloading connectors need
CUDA or XPU tensors; this one copies whatever tensors the engine registers.

The wrapper (`cluster.engines.vllm_engine`) asks for a park (`expect`) just before it
aborts the request: vLLM then offers the request's blocks here (`request_finished`),
they stay allocated while the next step copies them out (a save), and are freed when
the copy is reported done. The request comes back with `kv_transfer_params`
`{"pdlab_resume": ID}`: its stored tokens are loaded into the blocks vLLM gives it,
before that step's forward, and only its last token is computed. Host memory is
counted in blocks on the scheduler side, where parks are decided; the bytes are held
on the worker side. Both sides live in the engine's process (in-process engine core).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

RESUME = "pdlab_resume"


@dataclass
class Parked:
    """A parked request's KV: which tokens it covers and how many host blocks it holds."""
    tokens: tuple[int, ...]
    blocks: int
    saved: bool = False


@dataclass
class ParkMeta(KVConnectorMetadata):
    saves: list[tuple[str, int, list[int]]] = field(default_factory=list)
    """(vLLM request id, park key, its blocks) to copy out this step."""
    loads: list[tuple[int, int, list[int]]] = field(default_factory=list)
    """(park key, first stored block to load, the blocks to load it into)."""
    drops: list[int] = field(default_factory=list)


def find(connector) -> ParkConnector | None:
    """The park connector among an engine's connectors (a MultiConnector's or its only one)."""
    for child in getattr(connector, "sub_connectors", None) or [connector]:
        if isinstance(child, ParkConnector):
            return child
    return None


class ParkConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self.block_size = vllm_config.cache_config.block_size
        self.free_blocks = int(extra.get("capacity_blocks", 0))
        self.expected: dict[str, int] = {}
        self.parked: dict[int, Parked] = {}
        self.saving: dict[str, int] = {}
        self.meta = ParkMeta()
        self.stored_blocks = 0
        """Blocks freed by saves that finished, since the wrapper last took the count."""
        self.layers: list[torch.Tensor] = []
        self.host: dict[int, list[torch.Tensor]] = {}
        self.saved: set[str] = set()
        self.finished: set[str] = set()

    @property
    def requires_kv_delivery(self) -> bool:
        return False

    # ---- what the wrapper asks (scheduler side) ------------------------------------------
    def expect(self, vllm_id: str, key: int, blocks: int) -> bool:
        """Park the request `vllm_id` (our request `key`, holding `blocks`) when vLLM
        lets it go next; False if host memory has no room for it."""
        if blocks > self.free_blocks:
            return False
        self.expected[vllm_id] = key
        return True

    def drop(self, key: int) -> None:
        """Forget a parked request (given up by the router, or resumed elsewhere)."""
        parked = self.parked.pop(key, None)
        if parked is not None:
            self.free_blocks += parked.blocks
            self.meta.drops.append(key)

    def take_stored(self) -> int:
        stored, self.stored_blocks = self.stored_blocks, 0
        return stored

    # ---- scheduler side --------------------------------------------------------------
    def request_finished(self, request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        key = self.expected.pop(request.request_id, None)
        block_ids = list(block_ids[0] if block_ids and isinstance(block_ids[0], (list, tuple)) else block_ids)
        if key is None or not request.num_computed_tokens or len(block_ids) > self.free_blocks:
            return False, None
        self.free_blocks -= len(block_ids)
        self.parked[key] = Parked(tuple(request.all_token_ids[:request.num_computed_tokens]), len(block_ids))
        self.saving[request.request_id] = key
        self.meta.saves.append((request.request_id, key, block_ids))
        return True, None

    def _parked_for(self, request) -> tuple[int, Parked] | None:
        key = (request.kv_transfer_params or {}).get(RESUME)
        parked = self.parked.get(key) if key is not None else None
        return None if parked is None else (key, parked)

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int | None, bool]:
        found = self._parked_for(request)
        if found is None:
            return 0, False
        parked = found[1]
        if not parked.saved:
            return None, False
        if tuple(request.all_token_ids[:len(parked.tokens)]) != parked.tokens \
                or len(parked.tokens) >= request.num_tokens:
            return 0, False
        return max(0, len(parked.tokens) - num_computed_tokens), False

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        found = self._parked_for(request)
        if found is None:
            return
        key, parked = found
        if not num_external_tokens:
            self.drop(key)
            return
        first = (len(parked.tokens) - num_external_tokens) // self.block_size
        ids = list(blocks.get_block_ids()[0])[first:parked.blocks]
        self.meta.loads.append((key, first, ids))
        del self.parked[key]
        self.free_blocks += parked.blocks

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        meta, self.meta = self.meta, ParkMeta()
        return meta

    def update_connector_output(self, connector_output) -> None:
        for vllm_id in connector_output.finished_sending or ():
            key = self.saving.pop(vllm_id, None)
            if key is not None and key in self.parked:
                self.parked[key].saved = True
                self.stored_blocks += self.parked[key].blocks

    # ---- worker side -------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        seen: set[int] = set()
        for tensor in kv_caches.values():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                self.layers.append(tensor)

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        for key, first, ids in meta.loads:
            stored = self.host.pop(key)
            index = torch.tensor(ids, dtype=torch.long)
            for layer, kv in zip(self.layers, stored):
                layer.index_copy_(0, index, kv[first:first + len(ids)])
        for vllm_id, key, ids in meta.saves:
            index = torch.tensor(ids, dtype=torch.long)
            self.host[key] = [layer.index_select(0, index) for layer in self.layers]
            self.saved.add(vllm_id)
        for key in meta.drops:
            self.host.pop(key, None)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self.finished |= finished_req_ids
        done = self.saved & self.finished
        self.saved -= done
        self.finished &= self.saved
        return done or None, None
